"""Priors p(z): standard Gaussian, mixture of Gaussians, and the VampPrior (Tomczak & Welling 2018)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from vaebench.core.mixture import DiagonalGaussianMixture


class StandardPrior(nn.Module):
    """p(z) = N(0, I), event shape [d]."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("zero", torch.zeros(dim))

    def forward(self, encoder=None) -> Distribution:
        return Independent(Normal(self.zero, torch.ones_like(self.zero)), 1)


class MixturePrior(nn.Module):
    """p(z) = (1/K) sum_k N(z; m_k, diag s_k^2) with trainable means and log-variances."""

    def __init__(self, dim: int, n_components: int):
        super().__init__()
        self.loc = nn.Parameter(torch.randn(n_components, dim))
        self.logvar = nn.Parameter(torch.zeros(n_components, dim))

    def forward(self, encoder=None) -> Distribution:
        return DiagonalGaussianMixture(self.loc, torch.exp(0.5 * self.logvar.clamp(-6.0, 2.0)))


class VampPrior(nn.Module):
    """p(z) = (1/K) sum_k q(z|u_k) with pseudo-inputs u_k = hardtanh_[0,1](raw_k), [K, D].

    ``trainable=False`` is the "VampPrior (data)" variant: u_k are fixed training images.
    """

    def __init__(self, x_dim: int, n_components: int, init: torch.Tensor | None = None, trainable: bool = True):
        super().__init__()
        raw = init.clone().float() if init is not None else 0.5 + 0.01 * torch.randn(n_components, x_dim)
        if trainable:
            self.raw = nn.Parameter(raw)
        else:
            self.register_buffer("raw", raw)

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        return self.raw.clamp(0.0, 1.0)

    def forward(self, encoder) -> Distribution:
        loc, scale = encoder(self.pseudo_inputs)
        return DiagonalGaussianMixture(loc, scale)


def make_prior(kind: str, z_dim: int, x_dim: int, n_components: int, data: torch.Tensor | None = None) -> nn.Module:
    """A prior by name: ``standard``, ``mog``, ``vamp``, ``vamp-data`` (pseudo-inputs = ``data[:K]``)."""
    if kind == "standard":
        return StandardPrior(z_dim)
    if kind == "mog":
        return MixturePrior(z_dim, n_components)
    if kind == "vamp":
        return VampPrior(x_dim, n_components)
    if kind == "vamp-data":
        init = data[:n_components] if data is not None else torch.zeros(n_components, x_dim)
        return VampPrior(x_dim, n_components, init=init, trainable=False)
    raise ValueError(f"unknown prior {kind!r}: use standard, mog, vamp or vamp-data")
