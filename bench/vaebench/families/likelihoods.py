"""Decoders for 8-bit grey data: the probability of each pixel's bin, so log p(x) is a discrete log-likelihood.

Pixel values are x = v / 255, v in {0, ..., 255}. A continuous density f with CDF F over the real line becomes a
distribution over the 256 levels by giving level v the mass of its bin:

    P(x) = F(x + h) - F(x - h),  h = 1 / 510 (half a bin),  with the end bins open:
    P(0) = F(h),  P(1) = 1 - F(1 - h).

The masses sum to one, so log p(x) in nats per image (and bits per dimension, -log p(x) / (D ln 2)) is the
same kind of number as a Bernoulli decoder's on binary data and as the papers' discretized numbers (the
VampPrior paper's discretized logistic for Frey Faces). Two CDFs:

- :class:`DiscretizedLogistic`: F(y) = sigmoid((y - loc) / scale);
- :class:`DiscretizedNormal`: F(y) = Phi((y - loc) / scale), a Gaussian decoder with learned variance.

Both are elementwise (batch shape = the parameters' shape); wrap in ``Independent(..., 1)`` for an image. Their
log-masses are computed without cancellation: log(F(a) - F(b)) from log-CDFs in the tail where both are near 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.nn import functional as F

LEVELS = 256
HALF_BIN = 0.5 / (LEVELS - 1)


class _GreyLevels(constraints.Constraint):
    """Values in [0, 1] that are multiples of 1/255 (to float32 rounding)."""

    is_discrete = True
    event_dim = 0

    def check(self, value: Tensor) -> Tensor:
        levels = value * (LEVELS - 1)
        return (value >= 0) & (value <= 1) & ((levels - levels.round()).abs() < 1e-3)


grey_levels = _GreyLevels()


def _log_diff_exp(log_a: Tensor, log_b: Tensor) -> Tensor:
    """log(exp(log_a) - exp(log_b)) for log_a >= log_b, exact to rounding (``-inf`` where they are equal)."""
    return log_a + torch.log(-torch.expm1(log_b - log_a))


class _DiscretizedContinuous(Distribution):
    """A continuous location-scale law binned onto the 256 grey levels; subclasses give the log-CDF."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = grey_levels
    has_rsample = False

    def __init__(self, loc: Tensor, scale: Tensor, validate_args: bool | None = None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        super().__init__(batch_shape=self.loc.shape, validate_args=validate_args)

    def _log_cdf(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def _log_mass(self, lower: Tensor, upper: Tensor) -> Tensor:
        """log(F(upper) - F(lower)) for standardized bin edges lower < upper; either may be infinite. In the upper
        tail F is near one and the difference of two CDFs cancels, so there it is computed as the difference of
        the survival functions, F(-lower) - F(-upper) for symmetric laws."""
        upper_tail = lower > 0
        low = torch.where(upper_tail, -upper, lower)
        high = torch.where(upper_tail, -lower, upper)
        return _log_diff_exp(self._log_cdf(high), self._log_cdf(low))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        lower = torch.where(value <= HALF_BIN, -math.inf, (value - HALF_BIN - self.loc) / self.scale)
        upper = torch.where(value >= 1 - HALF_BIN, math.inf, (value + HALF_BIN - self.loc) / self.scale)
        return self._log_mass(lower, upper)

    @property
    def mean(self) -> Tensor:
        """The location clamped to [0, 1] (a picture of the decoder, not the exact mean of the binned law)."""
        return self.loc.clamp(0, 1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """A draw of the continuous law rounded to its bin (the end bins take everything beyond them)."""
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(1e-7, 1 - 1e-7)
            y = self.loc + self.scale * self._icdf_standard(u)
            return (y.clamp(0, 1) * (LEVELS - 1)).round() / (LEVELS - 1)

    def _icdf_standard(self, u: Tensor) -> Tensor:
        raise NotImplementedError


class DiscretizedLogistic(_DiscretizedContinuous):
    """Logistic(loc, scale) binned onto the 256 grey levels (see the module docstring)."""

    def _log_cdf(self, u: Tensor) -> Tensor:
        return F.logsigmoid(u)

    def _icdf_standard(self, u: Tensor) -> Tensor:
        return torch.logit(u)


class DiscretizedNormal(_DiscretizedContinuous):
    """Normal(loc, scale) binned onto the 256 grey levels (see the module docstring)."""

    def _log_cdf(self, u: Tensor) -> Tensor:
        return torch.special.log_ndtr(u)

    def _icdf_standard(self, u: Tensor) -> Tensor:
        return torch.special.ndtri(u)


GREY_LIKELIHOODS = {"logistic": DiscretizedLogistic, "gaussian": DiscretizedNormal}
