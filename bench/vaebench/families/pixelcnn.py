"""A small PixelCNN decoder (van den Oord et al. 2016) for binary images, conditioned on the latent code.

p(x|z) = prod_i Bernoulli(x_i; sigmoid(l_i(x_<i, z))), pixels i in raster order. Masked convolutions make logit
l_i see only the pixels before i: the first layer's mask ("A") hides the centre pixel and everything after it,
the later ones ("B") hide only what comes after the centre (their input at i already depends on pixels < i
only). The code z enters every layer as a per-channel bias (a linear map of the decoder's features), as in the
VampPrior paper's PixelHVAE. log p(x|z) needs one pass (teacher forcing); a sample needs one pass per pixel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, constraints
from torch.nn import functional as F

ROWS_PER_PASS = 256  # images per PixelCNN pass in log_prob: bounds memory at K x B rows


class MaskedConv2d(nn.Conv2d):
    """A square convolution whose kernel sees only the pixels before the centre in raster order; mask ``"A"``
    also hides the centre, ``"B"`` keeps it."""

    def __init__(self, n_in: int, n_out: int, size: int, mask: str):
        super().__init__(n_in, n_out, size, padding=size // 2)
        if mask not in ("A", "B"):
            raise ValueError(f"mask {mask!r}: use 'A' (first layer) or 'B'")
        keep = torch.ones(size, size)
        centre = size // 2
        keep[centre, centre + (mask == "B") :] = 0
        keep[centre + 1 :] = 0
        self.register_buffer("mask", keep[None, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNN(nn.Module):
    """Logits [N, H*W] of p(x|z) from images x [N, H*W] in {0, 1} and conditioning features [N, n_cond]: a 7x7
    mask-A layer, ``layers`` 3x3 mask-B layers of ``channels`` channels, then a 1x1 convolution to one logit."""

    def __init__(self, image_shape: tuple[int, int], n_cond: int, channels: int = 32, layers: int = 4):
        super().__init__()
        self.image_shape = image_shape
        self.convs = nn.ModuleList(
            [MaskedConv2d(1, channels, 7, "A"), *(MaskedConv2d(channels, channels, 3, "B") for _ in range(layers))]
        )
        self.cond = nn.ModuleList(nn.Linear(n_cond, channels) for _ in self.convs)
        self.out = nn.Conv2d(channels, 1, 1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = x.reshape(-1, 1, *self.image_shape)
        for conv, proj in zip(self.convs, self.cond, strict=True):
            h = F.relu(conv(h) + proj(cond)[:, :, None, None])
        return self.out(h).flatten(1)


class AutoregressiveBernoulli(Distribution):
    """p(x|z) of a :class:`PixelCNN` for conditioning features ``cond`` [*batch, n_cond]: event shape [H*W]."""

    support = constraints.independent(constraints.boolean, 1)
    has_rsample = False

    def __init__(self, net: PixelCNN, cond: Tensor):
        self.net, self.cond = net, cond
        h, w = net.image_shape
        super().__init__(batch_shape=cond.shape[:-1], event_shape=torch.Size([h * w]), validate_args=False)

    def log_prob(self, x: Tensor) -> Tensor:
        """sum_i log Bernoulli(x_i; l_i(x_<i)), [*batch]; x broadcasts against the batch (e.g. [B, D] with [K, B])."""
        cond = self.cond.reshape(-1, self.cond.shape[-1])
        x = x.expand(*self.batch_shape, -1).reshape(-1, self.event_shape[0])
        out = [
            -F.binary_cross_entropy_with_logits(self.net(xs, cs), xs, reduction="none").sum(-1)
            for xs, cs in zip(x.split(ROWS_PER_PASS), cond.split(ROWS_PER_PASS), strict=True)
        ]
        return torch.cat(out).reshape(self.batch_shape)

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """Pixel by pixel, one pass each."""
        cond = self.cond.expand(*sample_shape, *self.cond.shape).reshape(-1, self.cond.shape[-1])
        x = torch.zeros(len(cond), self.event_shape[0], dtype=cond.dtype, device=cond.device)
        for i in range(self.event_shape[0]):
            x[:, i] = Bernoulli(logits=self.net(x, cond)[:, i]).sample()
        return x.reshape(*sample_shape, *self.batch_shape, -1)
