"""Models whose answers are known exactly, written against the interface only (no project classes)."""

from __future__ import annotations

import math

import torch
from torch.distributions import Independent, MultivariateNormal, Normal


class PPCA:
    """Probabilistic PCA: p(z) = N(0, I_d), p(x|z) = N(W z + b, sigma^2 I_D).

    log p(x) = log N(x; b, W W^T + sigma^2 I). With orthogonal columns of W the exact posterior
    N(M^-1 W^T (x - b), sigma^2 M^-1), M = W^T W + sigma^2 I, is diagonal. ``mean_shift`` and
    ``scale_factor`` turn q into a deliberately wrong diagonal Gaussian.
    """

    def __init__(
        self,
        dim_x: int = 6,
        dim_z: int = 3,
        sigma: float = 0.5,
        seed: int = 0,
        mean_shift: float = 0.0,
        scale_factor: float = 1.0,
        dtype=torch.float64,
    ):
        gen = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(dim_x, dim_z, generator=gen, dtype=dtype))
        self.W = basis * torch.linspace(0.8, 2.0, dim_z, dtype=dtype)
        self.b = torch.randn(dim_x, generator=gen, dtype=dtype)
        self.sigma, self.dim_z, self.dtype = sigma, dim_z, dtype
        self.mean_shift, self.scale_factor = mean_shift, scale_factor
        m_diag = (self.W * self.W).sum(0) + sigma**2
        self.post_scale = sigma / m_diag.sqrt()
        self.post_proj = self.W / m_diag  # [D, d]: mean = (x - b) @ post_proj

    def posterior(self, x):
        loc = (x - self.b) @ self.post_proj + self.mean_shift
        return Independent(Normal(loc, (self.post_scale * self.scale_factor).expand_as(loc)), 1)

    def prior(self):
        zero = torch.zeros(self.dim_z, dtype=self.dtype)
        return Independent(Normal(zero, torch.ones_like(zero)), 1)

    def likelihood(self, z):
        return Independent(Normal(z @ self.W.T + self.b, self.sigma), 1)

    def log_marginal(self, x):
        """Exact log p(x), computed in float64 whatever the model's dtype: [B]."""
        W, b = self.W.double(), self.b.double()
        cov = W @ W.T + self.sigma**2 * torch.eye(len(b), dtype=torch.float64)
        return MultivariateNormal(b, cov).log_prob(x.double())

    def sample_x(self, n: int, seed: int = 1):
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.dim_z, generator=gen, dtype=self.dtype)
        return z @ self.W.T + self.b + self.sigma * torch.randn(n, len(self.b), generator=gen, dtype=self.dtype)


class TablePosteriors:
    """x is an integer index i (shape [B, 1]); q(z|x_i) = N(loc_i, diag scale_i^2), p(z) = N(0, I),
    p(x|z) = N(x; z_0, 1) (only so that the reconstruction term exists)."""

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor):
        self.loc, self.scale = loc.double(), scale.double()

    def posterior(self, x):
        i = x[:, 0].long()
        return Independent(Normal(self.loc[i], self.scale[i]), 1)

    def prior(self):
        zero = torch.zeros(self.loc.shape[1], dtype=torch.float64)
        return Independent(Normal(zero, torch.ones_like(zero)), 1)

    def likelihood(self, z):
        return Independent(Normal(z[..., :1], 1.0), 1)

    def data(self):
        return torch.arange(len(self.loc), dtype=torch.float64)[:, None]


def log_normal(z, loc, scale):
    return -0.5 * ((z - loc) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi)
