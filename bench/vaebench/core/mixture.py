"""Mixtures of diagonal Gaussians whose log-density is a matrix product plus a logsumexp.

For components k with means m_k and precisions p_k = 1 / s_k^2 (all [K, d]),

    log N(z; m_k, s_k^2) = -1/2 (z^2 . p_k) + z . (m_k p_k) - 1/2 (m_k^2 . p_k) - 1/2 sum log s_k^2 - d/2 log 2pi,

so the [S, K] table of component log-densities is one [S, 2d] x [2d, K] product and the mixture
log-density a logsumexp over K. No [S, K, d] tensor is ever formed.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Categorical, Distribution, Independent, Normal, constraints


def component_log_prob(
    z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, log_mix: torch.Tensor | None = None
) -> torch.Tensor:
    """log N(z_s; loc_k, diag scale_k^2) (+ log_mix_k if given) for every pair: z [..., d], loc/scale [K, d],
    log_mix [K] -> [..., K]."""
    precision = scale.pow(-2)
    weights = torch.cat([-0.5 * precision, loc * precision], dim=1)  # [K, 2d]
    const = -0.5 * (loc.pow(2) * precision).sum(1) - scale.log().sum(1) - 0.5 * loc.shape[1] * math.log(2 * math.pi)
    if log_mix is not None:
        const = const + log_mix
    features = torch.cat([z.pow(2), z], dim=-1)  # [..., 2d]
    return torch.addmm(const, features.reshape(-1, features.shape[-1]), weights.T).reshape(*z.shape[:-1], -1)


def mixture_log_prob(
    z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, log_mix: torch.Tensor | None = None, chunk_size: int = 4096
) -> torch.Tensor:
    """log sum_k pi_k N(z; loc_k, diag scale_k^2) for z [..., d] -> [...], chunked over components.

    ``log_mix`` [K] are the log mixing weights (uniform when None). Chunks over K combine by
    ``logaddexp``, so memory is [S, chunk_size] whatever K is (K can be a whole training set).
    """
    n = loc.shape[0]
    if log_mix is None:
        log_mix = torch.full((n,), -math.log(n), dtype=loc.dtype, device=loc.device)
    total = None
    for start in range(0, n, chunk_size):
        stop = start + chunk_size
        part = torch.logsumexp(component_log_prob(z, loc[start:stop], scale[start:stop], log_mix[start:stop]), dim=-1)
        total = part if total is None else torch.logaddexp(total, part)
    return total


class DiagonalGaussianMixture(Distribution):
    """p(z) = sum_k pi_k N(z; loc_k, diag scale_k^2); batch shape [], event shape [d].

    Args:
        loc (Tensor): component means, [K, d].
        scale (Tensor): component standard deviations, [K, d].
        mix_logits (Tensor, optional): unnormalised log mixing weights, [K]; uniform if omitted.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        mix_logits: torch.Tensor | None = None,
        validate_args: bool | None = None,
    ):
        self.loc, self.scale = loc, scale
        if mix_logits is None:
            mix_logits = torch.zeros(loc.shape[0], dtype=loc.dtype, device=loc.device)
        self.log_mix = torch.log_softmax(mix_logits, dim=0)
        super().__init__(batch_shape=torch.Size(), event_shape=loc.shape[1:], validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [...]."""
        return mixture_log_prob(value, self.loc, self.scale, self.log_mix)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            k = Categorical(logits=self.log_mix).sample(sample_shape)
            return Independent(Normal(self.loc[k], self.scale[k]), 1).sample()

    @property
    def mean(self) -> torch.Tensor:
        return (self.log_mix.exp()[:, None] * self.loc).sum(0)
