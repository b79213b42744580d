"""One- and two-level VAEs, implementing the ``vaebench.core.interface`` methods: Bernoulli decoders for binary
images, discretized-logistic or discretized-Gaussian decoders for 8-bit grey images (:mod:`.likelihoods`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from vaebench.families.likelihoods import GREY_LIKELIHOODS
from vaebench.families.networks import GaussianHead, mlp
from vaebench.families.pixelcnn import AutoregressiveBernoulli, PixelCNN
from vaebench.families.priors import make_prior
from vaebench.families.two_layer import TwoLayerVAE

LIKELIHOODS = ("bernoulli", *GREY_LIKELIHOODS)
LOG_SCALE_LIMITS = (-7.0, 0.0)  # of a grey decoder's per-pixel scale: from a tenth of a grey level to the range


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored next to its weights."""

    x_dim: int = 784
    z_dim: int = 40
    hidden: int = 300
    depth: int = 2
    net: str = "gated"  # gated (VampPrior paper) or tanh (IWAE paper)
    prior: str = "standard"  # standard, mog, vamp, vamp-data
    n_components: int = 500
    levels: int = 1  # 1: VAE; 2: the VampPrior paper's two-level HVAE (z1 and z2 both z_dim)
    logvar_limits: tuple[float, float] = field(default=(-6.0, 2.0))
    likelihood: str = "bernoulli"  # bernoulli (binary data), logistic or gaussian (8-bit grey data, binned)
    decoder: str = "mlp"  # mlp, or pixelcnn: a PixelCNN over the image conditioned on z (square binary images)
    hierarchy: str = "vampprior"  # levels = 2: vampprior (HVAE, top-down q) or iwae (bottom-up chain x -> h1 -> h2)
    z2_dim: int = 50  # hierarchy = iwae: size of h2 (h1 has z_dim)
    hidden2: int = 50  # hierarchy = iwae: units of the layers between h1 and h2

    def __post_init__(self) -> None:
        iwae_chain = (self.levels, self.prior, self.likelihood, self.decoder) == (2, "standard", "bernoulli", "mlp")
        if self.hierarchy == "iwae" and not iwae_chain:
            raise ValueError(
                "hierarchy = 'iwae' is the IWAE paper's two-layer model: levels = 2, prior = 'standard', "
                "likelihood = 'bernoulli', decoder = 'mlp'"
            )
        if self.decoder == "pixelcnn" and (self.likelihood != "bernoulli" or math.isqrt(self.x_dim) ** 2 != self.x_dim):
            raise ValueError(
                f"decoder = 'pixelcnn' needs likelihood = 'bernoulli' and square images, not {self.likelihood!r} "
                f"with x_dim = {self.x_dim}"
            )

    @property
    def latent_dim(self) -> int:
        """Units of the latent z: z_dim per level, or h1 and h2 of the IWAE chain."""
        return self.z_dim + self.z2_dim if self.hierarchy == "iwae" else self.z_dim * self.levels

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the square images a PixelCNN decoder models."""
        side = math.isqrt(self.x_dim)
        return side, side


def output_width(config: ModelConfig) -> int:
    """Outputs of the decoder's last layer: D logits, or D locations and D log-scales for a grey decoder."""
    return config.x_dim * (1 if config.likelihood == "bernoulli" else 2)


def output_distribution(likelihood: str, out: torch.Tensor) -> Distribution:
    """p(x|z) from the decoder's last layer ``out`` [..., width]: Bernoulli(logits = out), or for a grey decoder
    the binned law with loc = sigmoid(first half) and log-scale = the second half clamped to LOG_SCALE_LIMITS."""
    if likelihood == "bernoulli":
        return Independent(Bernoulli(logits=out), 1)
    loc, log_scale = out.chunk(2, dim=-1)
    return Independent(GREY_LIKELIHOODS[likelihood](torch.sigmoid(loc), log_scale.clamp(*LOG_SCALE_LIMITS).exp()), 1)


def output_network(config: ModelConfig) -> nn.Module:
    """What turns the decoder's features into p(x|z): one linear layer (see :func:`output_distribution`), or a
    :class:`PixelCNN` conditioned on the features."""
    if config.decoder == "pixelcnn":
        return PixelCNN(config.image_shape, config.hidden)
    return nn.Linear(config.hidden, output_width(config))


class Decoder(nn.Module):
    """An MLP trunk h(z), then :func:`output_network`."""

    def __init__(self, n_in: int, config: ModelConfig):
        super().__init__()
        self.trunk = mlp(n_in, config.hidden, config.depth, config.net)
        self.out = output_network(config)


class DecoderOutputMixin:
    """p(x|z) = output_distribution(out(features(z))), ``out`` the model's ``output_layer``, or a PixelCNN's
    autoregressive Bernoulli conditioned on the features. For a Bernoulli MLP decoder ``likelihood_head`` exposes
    that layer to the fused paths; the prior's pseudo-inputs (a VampPrior's;
    None for the others) are there for the report."""

    @property
    def pseudo_inputs(self) -> torch.Tensor | None:
        return getattr(self.prior_net, "pseudo_inputs", None)

    def likelihood(self, z: torch.Tensor) -> Distribution:
        features = self.likelihood_features(z)
        if self.config.decoder == "pixelcnn":
            return AutoregressiveBernoulli(self.output_layer, features)
        return output_distribution(self.config.likelihood, self.output_layer(features))

    @property
    def likelihood_head(self) -> nn.Linear | None:
        """The logits layer when p(x|z) is Bernoulli(logits = it), else None (no fused path)."""
        plain = self.config.likelihood == "bernoulli" and self.config.decoder == "mlp"
        return self.output_layer if plain else None


class VAE(DecoderOutputMixin, nn.Module):
    """q(z|x) = N(mu(x), diag sigma(x)^2); p(z) standard, MoG or VampPrior; p(x|z) Bernoulli or binned grey."""

    def __init__(self, config: ModelConfig, data: torch.Tensor | None = None):
        super().__init__()
        c = self.config = config
        self.encoder = nn.Sequential(
            mlp(c.x_dim, c.hidden, c.depth, c.net), GaussianHead(c.hidden, c.z_dim, *c.logvar_limits)
        )
        self.decoder = Decoder(c.z_dim, c)
        self.prior_net = make_prior(c.prior, c.z_dim, c.x_dim, c.n_components, data)

    def posterior(self, x: torch.Tensor) -> Distribution:
        loc, scale = self.encoder(x)
        return Independent(Normal(loc, scale), 1)

    def prior(self) -> Distribution:
        return self.prior_net(self.encoder)

    def likelihood_features(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder.trunk(z)

    @property
    def output_layer(self) -> nn.Module:
        return self.decoder.out


class HierarchicalPosterior(Distribution):
    """q(z1, z2 | x) = q(z2|x) q(z1|x, z2) over z = [z1, z2]; batch shape [B], event shape [2d].

    ``mean`` is (E[z1 | x, z2 = E[z2|x]], E[z2|x]): the plug-in mean of z1 given z2's mean.
    """

    has_rsample = True

    def __init__(self, model: HVAE, x: torch.Tensor):
        self.model, self.x_features = model, model.q1_x(x)
        self.top = model.posterior_top(x)
        d = self.top.event_shape[0]
        self.noise_dim = 2 * d
        super().__init__(batch_shape=x.shape[:1], event_shape=torch.Size([2 * d]), validate_args=False)

    def _bottom(self, z2: torch.Tensor) -> Distribution:
        features = self.x_features.expand(*z2.shape[:-1], -1)
        loc, scale = self.model.q1_head(self.model.q1_joint(torch.cat([features, self.model.q1_z(z2)], -1)))
        return Independent(Normal(loc, scale), 1)

    def rsample_from_noise(self, eps: torch.Tensor) -> torch.Tensor:
        d = eps.shape[-1] // 2
        top = self.top.base_dist
        z2 = top.loc + top.scale * eps[..., d:]
        bottom = self._bottom(z2).base_dist
        return torch.cat([bottom.loc + bottom.scale * eps[..., :d], z2], -1)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape + (self.noise_dim,)
        return self.rsample_from_noise(torch.randn(shape, device=self.x_features.device))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        z1, z2 = z.chunk(2, dim=-1)
        return self.top.log_prob(z2) + self._bottom(z2).log_prob(z1)

    @property
    def mean(self) -> torch.Tensor:
        z2 = self.top.mean
        return torch.cat([self._bottom(z2).mean, z2], -1)


class HierarchicalPrior(Distribution):
    """p(z1, z2) = p(z2) p(z1|z2) over z = [z1, z2]; event shape [2d]; p(z2) any of the three priors."""

    def __init__(self, model: HVAE, top: Distribution):
        self.model, self.top = model, top
        super().__init__(
            batch_shape=torch.Size(), event_shape=torch.Size([2 * top.event_shape[0]]), validate_args=False
        )

    def _bottom(self, z2: torch.Tensor) -> Distribution:
        loc, scale = self.model.p1(z2)
        return Independent(Normal(loc, scale), 1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        z1, z2 = z.chunk(2, dim=-1)
        return self.top.log_prob(z2) + self._bottom(z2).log_prob(z1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            z2 = self.top.sample(sample_shape)
            return torch.cat([self._bottom(z2).sample(), z2], -1)


class HVAE(DecoderOutputMixin, nn.Module):
    """The VampPrior paper's two-level VAE: q(z2|x) q(z1|x,z2), p(z2) p(z1|z2) p(x|z1,z2).

    Latent z = [z1, z2] (``latent_layers`` = [d, d]); p(z2) is standard, MoG or VampPrior, the
    VampPrior's pseudo-inputs going through q(z2|x).
    """

    def __init__(self, config: ModelConfig, data: torch.Tensor | None = None):
        super().__init__()
        c = self.config = config
        d, h = c.z_dim, c.hidden
        self.latent_layers = [d, d]
        self.encoder = nn.Sequential(mlp(c.x_dim, h, c.depth, c.net), GaussianHead(h, d, *c.logvar_limits))
        self.q1_x, self.q1_z, self.q1_joint = mlp(c.x_dim, h, 1, c.net), mlp(d, h, 1, c.net), mlp(2 * h, h, 1, c.net)
        self.q1_head = GaussianHead(h, d, *c.logvar_limits)
        self.p1 = nn.Sequential(mlp(d, h, c.depth, c.net), GaussianHead(h, d, *c.logvar_limits))
        self.p_z1, self.p_z2, self.p_joint = mlp(d, h, 1, c.net), mlp(d, h, 1, c.net), mlp(2 * h, h, 1, c.net)
        self.p_out = output_network(c)
        self.prior_net = make_prior(c.prior, d, c.x_dim, c.n_components, data)

    def posterior_top(self, x: torch.Tensor) -> Distribution:
        loc, scale = self.encoder(x)
        return Independent(Normal(loc, scale), 1)

    def posterior(self, x: torch.Tensor) -> Distribution:
        return HierarchicalPosterior(self, x)

    def prior(self) -> Distribution:
        return HierarchicalPrior(self, self.prior_net(self.encoder))

    def likelihood_features(self, z: torch.Tensor) -> torch.Tensor:
        z1, z2 = z.chunk(2, dim=-1)
        return self.p_joint(torch.cat([self.p_z1(z1), self.p_z2(z2)], -1))

    @property
    def output_layer(self) -> nn.Module:
        return self.p_out


def build_model(config: ModelConfig, data: torch.Tensor | None = None) -> nn.Module:
    """A VAE (``levels=1``), HVAE (``levels=2``) or the IWAE paper's two-layer model (``hierarchy="iwae"``)."""
    if config.hierarchy == "iwae":
        return TwoLayerVAE(config)
    return (VAE if config.levels == 1 else HVAE)(config, data)
