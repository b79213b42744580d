"""The model interface every estimator and metric in ``bench`` relies on, and nothing more.

A latent-variable model p(x, z) = p(z) p(x|z) with an amortised posterior q(z|x) provides:

- ``posterior(x)``: q(z|x) for x [B, D], a ``torch.distributions.Distribution`` with batch shape
  [B] and event shape [d]. It must support ``rsample``/``sample`` and ``log_prob``; a posterior
  that is ``Independent(Normal(loc, scale), 1)`` or defines ``noise_dim`` and
  ``rsample_from_noise(eps)`` (eps [k, B, noise_dim] standard normal -> z [k, B, d]) gets seeded
  per-example noise, so results do not depend on batch or chunk size.
- ``prior()``: p(z), a distribution with event shape [d] (batch shape []).
- ``likelihood(z)``: p(x|z) for z of any leading shape [..., d], event shape [D].

Optional:

- ``log_weights(x, k)``: a [k, B] tensor of log p(x, z_k) - log q(z_k|x) with z_k ~ q(z|x);
  the estimators use it when present (e.g. for a hierarchy the model evaluates more cheaply).
- ``latent_layers``: a list of layer sizes summing to d, for per-layer active units.
- ``pseudo_inputs``: a [K, D] tensor of a VampPrior's pseudo-inputs, shown by the report.
- ``likelihood_features(z)`` and ``likelihood_head`` (an ``nn.Linear``): for a Bernoulli decoder
  whose logits are ``likelihood_head(likelihood_features(z))``; the fused log-weight kernel
  (``vaebench.core.kernels``) then computes log p(x|z) without materialising the logits.

Nothing here needs to be an ``nn.Module``: an object written outside the project works as is.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch.distributions import Distribution


@runtime_checkable
class LatentVariableModel(Protocol):
    """Structural type of a model the estimators accept (see the module docstring)."""

    def posterior(self, x: torch.Tensor) -> Distribution: ...

    def prior(self) -> Distribution: ...

    def likelihood(self, z: torch.Tensor) -> Distribution: ...


def missing_methods(model: object) -> list[str]:
    """The interface methods ``model`` lacks (empty when it has them all)."""
    return [m for m in ("posterior", "prior", "likelihood") if not callable(getattr(model, m, None))]


def check_model(model: object) -> None:
    """Raise ``TypeError`` naming the missing methods if ``model`` lacks the interface."""
    missing = missing_methods(model)
    if missing:
        raise TypeError(
            f"{type(model).__name__} does not implement the model interface: missing "
            f"{', '.join(missing)} (see vaebench.core.interface)"
        )
