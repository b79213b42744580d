"""Building blocks: the VampPrior paper's gated dense layers and the IWAE paper's tanh MLP."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class GatedDense(nn.Module):
    """h = (W x + b) * sigmoid(V x + c)  (Dauphin et al. 2017; used by Tomczak & Welling 2018).

    Both products are one matrix multiply with [W; V] (one GEMM of twice the width runs faster than
    two); the parameters stay two ``nn.Linear`` so that checkpoints name them ``value`` and ``gate``.
    """

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.value = nn.Linear(n_in, n_out)
        self.gate = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = F.linear(
            x, torch.cat([self.value.weight, self.gate.weight]), torch.cat([self.value.bias, self.gate.bias])
        )
        value, gate = both.chunk(2, dim=-1)
        return value * torch.sigmoid(gate)


def mlp(n_in: int, hidden: int, depth: int, kind: str) -> nn.Sequential:
    """``depth`` hidden layers of width ``hidden``: ``gated`` (GatedDense) or ``tanh`` (Linear + tanh)."""
    layers: list[nn.Module] = []
    for i in range(depth):
        width_in = n_in if i == 0 else hidden
        if kind == "gated":
            layers.append(GatedDense(width_in, hidden))
        elif kind == "tanh":
            layers += [nn.Linear(width_in, hidden), nn.Tanh()]
        else:
            raise ValueError(f"unknown network kind {kind!r}: use 'gated' or 'tanh'")
    return nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """(mean, std) of a diagonal Gaussian from features; log-variance clamped to [-6, 2] as in the
    VampPrior code (the IWAE code's unclamped log-std is the same map with wide limits)."""

    def __init__(self, n_in: int, n_out: int, logvar_min: float = -6.0, logvar_max: float = 2.0):
        super().__init__()
        self.mean = nn.Linear(n_in, n_out)
        self.logvar = nn.Linear(n_in, n_out)
        self.limits = (logvar_min, logvar_max)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(h), torch.exp(0.5 * self.logvar(h).clamp(*self.limits))
