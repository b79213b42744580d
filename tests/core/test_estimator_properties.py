"""Property-based tests of the IWAE bound over shapes, k and extreme but finite log-weights."""

import itertools
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vaebench.core.estimators import iwae_bound


class FixedWeights:
    """A model whose log-weights are given: successive ``log_weights(x, k)`` calls return the next
    k rows, as successive chunks of fresh samples would."""

    def __init__(self, lw: torch.Tensor):
        self.lw, self.used = lw, 0

    def log_weights(self, x, k):
        rows = self.lw[self.used : self.used + k]
        self.used += k
        return rows

    def posterior(self, x):
        raise AssertionError("the log_weights hook must be used")

    prior = likelihood = posterior


def weights(min_k=1, max_k=64, max_b=5):
    return st.tuples(
        st.integers(min_k, max_k),
        st.integers(1, max_b),
        st.integers(0, 2**31 - 1),
        st.floats(1e-3, 300.0),
        st.floats(-1e4, 1e4),
    )


def _make(k, b, seed, spread, offset):
    gen = torch.Generator().manual_seed(seed)
    return offset + spread * torch.randn(k, b, generator=gen, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(weights(), st.integers(1, 70), st.sampled_from([torch.float32, torch.float64]))
def test_bound_is_finite_between_mean_and_max_and_matches_float64(params, chunk, dtype):
    lw = _make(*params).to(dtype)
    k, b = lw.shape
    got = iwae_bound(FixedWeights(lw), torch.zeros(b, 1, dtype=dtype), k, chunk_size=chunk).double()
    lw64 = lw.double()
    reference = torch.logsumexp(lw64, 0) - math.log(k)
    eps = (1e-12 if dtype == torch.float64 else 1e-6) * (1 + lw64.abs().max())  # a few ulps of the largest weight
    assert torch.isfinite(got).all()
    assert (got >= lw64.mean(0) - eps).all() and (got <= lw64.max(0).values + eps).all()
    assert torch.allclose(got, reference, rtol=0, atol=eps)


@settings(max_examples=40, deadline=None)
@given(weights(min_k=2, max_k=8, max_b=3), st.data())
def test_full_bound_at_least_average_of_subset_bounds(params, data):
    """For fixed weights, L_K >= mean over all size-M subsets of L_M (the step in Burda et al.'s proof)."""
    lw = _make(*params)
    k, b = lw.shape
    m = data.draw(st.integers(1, k))
    full = iwae_bound(FixedWeights(lw), torch.zeros(b, 1, dtype=torch.float64), k)
    subsets = [torch.logsumexp(lw[list(s)], 0) - math.log(m) for s in itertools.combinations(range(k), m)]
    average = torch.stack(subsets).mean(0)
    assert (full >= average - 1e-9 * (1 + average.abs())).all()
