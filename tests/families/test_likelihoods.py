"""The discretized decoders' log-masses against a direct computation: numerical integration of the continuous
density over each bin (scipy's adaptive quadrature, float64, its own error estimate far below the tolerance)."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from vaebench.families.likelihoods import HALF_BIN, LEVELS, DiscretizedLogistic, DiscretizedNormal

LAWS = [(DiscretizedLogistic, stats.logistic), (DiscretizedNormal, stats.norm)]
LEVEL_VALUES = torch.arange(LEVELS, dtype=torch.float64) / (LEVELS - 1)
# (loc, scale): centred, at the edges, beyond them, narrow (a bin holds almost all the mass), wide
PARAMETERS = [(0.5, 0.1), (0.02, 0.01), (0.99, 0.03), (-0.3, 0.2), (1.4, 0.15), (0.37, 0.0005), (0.5, 3.0)]


def bin_mass_by_quadrature(law, loc: float, scale: float, x: float) -> float:
    """The integral of the density over x's bin (end bins open), by quadrature over the standardized variable."""
    lower = -np.inf if x <= HALF_BIN else (x - HALF_BIN - loc) / scale
    upper = np.inf if x >= 1 - HALF_BIN else (x + HALF_BIN - loc) / scale
    mass, error = integrate.quad(law.pdf, lower, upper, epsabs=0, epsrel=1e-12, limit=200)
    assert error <= 1e-9 * max(mass, 1e-300)
    return mass


@pytest.mark.parametrize("cls, law", LAWS, ids=["logistic", "normal"])
@pytest.mark.parametrize("loc, scale", PARAMETERS)
def test_log_mass_matches_quadrature(cls, law, loc, scale):
    """Every level whose mass quadrature resolves (> 1e-250): |log P - log quad| within 1e-8 relative to the mass,
    i.e. far below float64 quadrature's 1e-12 relative error plus the log-CDF's rounding."""
    dist = cls(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    ours = dist.log_prob(LEVEL_VALUES).numpy()
    for v in range(0, LEVELS, 5):
        mass = bin_mass_by_quadrature(law, loc, scale, float(LEVEL_VALUES[v]))
        if mass > 1e-250:
            assert ours[v] == pytest.approx(math.log(mass), abs=1e-8), (v, ours[v], math.log(mass))


@pytest.mark.parametrize("cls", [DiscretizedLogistic, DiscretizedNormal])
@pytest.mark.parametrize("loc, scale", PARAMETERS)
def test_masses_sum_to_one_and_stay_finite(cls, loc, scale):
    dist = cls(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    log_mass = dist.log_prob(LEVEL_VALUES)
    assert torch.logsumexp(log_mass, 0).item() == pytest.approx(0.0, abs=1e-12)
    assert not log_mass.isnan().any()


@pytest.mark.parametrize("cls", [DiscretizedLogistic, DiscretizedNormal])
def test_gradients_are_finite_in_the_tails_and_end_bins(cls):
    loc = torch.tensor([-2.0, 0.0, 0.5, 1.0, 3.0], requires_grad=True)
    log_scale = torch.tensor([-6.0, -3.0, -1.0, -3.0, -6.0], requires_grad=True)
    x = torch.tensor([1.0, 0.0, 128 / 255, 1.0, 0.0])
    log_p = cls(loc, log_scale.exp()).log_prob(x)
    log_p.sum().backward()
    assert torch.isfinite(log_p).all() and torch.isfinite(loc.grad).all() and torch.isfinite(log_scale.grad).all()


@pytest.mark.parametrize("cls", [DiscretizedLogistic, DiscretizedNormal])
def test_samples_are_grey_levels_with_the_law_s_frequencies(cls):
    """200,000 draws at loc 0.5, scale 0.01: each level's frequency within 4 binomial s.e. of its mass."""
    dist = cls(torch.full((200_000,), 0.5, dtype=torch.float64), torch.full((200_000,), 0.01, dtype=torch.float64))
    torch.manual_seed(0)
    draws = dist.sample()
    assert dist.support.check(draws).all()
    counts = torch.bincount((draws * 255).round().long(), minlength=LEVELS).double() / len(draws)
    mass = cls(torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.01, dtype=torch.float64)).log_prob(LEVEL_VALUES)
    mass = mass.exp()
    se = (mass * (1 - mass) / len(draws)).sqrt()
    assert ((counts - mass).abs() <= 4 * se + 1e-12).all()


def test_support_rejects_values_off_the_grey_levels():
    dist = DiscretizedLogistic(torch.tensor(0.5), torch.tensor(0.1), validate_args=True)
    with pytest.raises(ValueError):
        dist.log_prob(torch.tensor(0.5))  # 127.5 / 255: between two levels
    assert dist.log_prob(torch.tensor(128 / 255)).isfinite()
