"""The IWAE paper's two-stochastic-layer VAE (Burda et al. 2015, section 5): a chain x -> h1 -> h2.

    q(h1, h2 | x) = q(h1 | x) q(h2 | h1),     p(x, h1, h2) = p(h2) p(h1 | h2) p(x | h1),

every conditional a diagonal Gaussian from a two-layer tanh MLP (x: 100-100 units to h1 of 100; h1: 50-50 to
h2 of 50, as in the paper), p(h2) = N(0, I), p(x | h1) Bernoulli. The latent z = [h1, h2]; the Bernoulli
decoder reads h1 only. Unlike the VampPrior paper's HVAE (:class:`vaebench.families.vae.HVAE`, top-down
q(z1 | x, z2)), the posterior here is bottom-up.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from vaebench.families.networks import GaussianHead, mlp


def _gaussian(net: nn.Module, h: torch.Tensor) -> Independent:
    loc, scale = net(h)
    return Independent(Normal(loc, scale), 1)


class ChainPosterior(Distribution):
    """q(h1 | x) q(h2 | h1) over z = [h1, h2]: batch shape [B], event shape [d1 + d2]; ``mean`` is the plug-in
    (E[h1 | x], E[h2 | h1 = E[h1 | x]])."""

    has_rsample = True

    def __init__(self, model: TwoLayerVAE, x: torch.Tensor):
        self.model, self.bottom = model, _gaussian(model.q_h1, x)
        self.d1, self.noise_dim = model.d1, model.d1 + model.d2
        super().__init__(batch_shape=x.shape[:1], event_shape=torch.Size([self.noise_dim]), validate_args=False)

    def rsample_from_noise(self, eps: torch.Tensor) -> torch.Tensor:
        """z for standard normal noise eps [..., B, d1 + d2] (the seeded estimators' entry point)."""
        h1 = self.bottom.base_dist.loc + self.bottom.base_dist.scale * eps[..., : self.d1]
        top = _gaussian(self.model.q_h2, h1).base_dist
        return torch.cat([h1, top.loc + top.scale * eps[..., self.d1 :]], -1)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape + (self.noise_dim,)
        return self.rsample_from_noise(torch.randn(shape, device=self.bottom.base_dist.loc.device))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        h1, h2 = z[..., : self.d1], z[..., self.d1 :]
        return self.bottom.log_prob(h1) + _gaussian(self.model.q_h2, h1).log_prob(h2)

    @property
    def mean(self) -> torch.Tensor:
        h1 = self.bottom.mean
        return torch.cat([h1, _gaussian(self.model.q_h2, h1).mean], -1)


class ChainPrior(Distribution):
    """p(h2) p(h1 | h2) over z = [h1, h2], p(h2) = N(0, I): event shape [d1 + d2]."""

    def __init__(self, model: TwoLayerVAE):
        self.model = model
        zero = model.p_out.bias.new_zeros(model.d2)
        self.top = Independent(Normal(zero, torch.ones_like(zero)), 1)
        super().__init__(event_shape=torch.Size([model.d1 + model.d2]), validate_args=False)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        h1, h2 = z[..., : self.model.d1], z[..., self.model.d1 :]
        return self.top.log_prob(h2) + _gaussian(self.model.p_h1, h2).log_prob(h1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            h2 = self.top.sample(sample_shape)
            return torch.cat([_gaussian(self.model.p_h1, h2).sample(), h2], -1)


class TwoLayerVAE(nn.Module):
    """Two stochastic layers h1 (``z_dim``), h2 (``z2_dim``); deterministic layers of ``hidden`` units between x
    and h1 and of ``hidden2`` between h1 and h2, ``depth`` each, ``net`` activations (see the module docstring)."""

    def __init__(self, config):
        super().__init__()
        c = self.config = config
        self.d1, self.d2 = c.z_dim, c.z2_dim
        self.latent_layers = [self.d1, self.d2]
        limits = c.logvar_limits
        self.q_h1 = nn.Sequential(mlp(c.x_dim, c.hidden, c.depth, c.net), GaussianHead(c.hidden, self.d1, *limits))
        self.q_h2 = nn.Sequential(mlp(self.d1, c.hidden2, c.depth, c.net), GaussianHead(c.hidden2, self.d2, *limits))
        self.p_h1 = nn.Sequential(mlp(self.d2, c.hidden2, c.depth, c.net), GaussianHead(c.hidden2, self.d1, *limits))
        self.p_x = mlp(self.d1, c.hidden, c.depth, c.net)
        self.p_out = nn.Linear(c.hidden, c.x_dim)

    def posterior(self, x: torch.Tensor) -> Distribution:
        return ChainPosterior(self, x)

    def prior(self) -> Distribution:
        return ChainPrior(self)

    def likelihood_features(self, z: torch.Tensor) -> torch.Tensor:
        return self.p_x(z[..., : self.d1])

    @property
    def likelihood_head(self) -> nn.Linear:
        return self.p_out

    def likelihood(self, z: torch.Tensor) -> Distribution:
        return Independent(Bernoulli(logits=self.p_out(self.likelihood_features(z))), 1)
