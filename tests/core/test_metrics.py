"""Active units, ELBO surgery and q_EW sampling against exactly known answers."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from tests.closed_form import PPCA, TablePosteriors
from vaebench.core.metrics import active_units, elbo_surgery, qew_samples
from vaebench.core.mixture import DiagonalGaussianMixture, mixture_log_prob

Z = 4.0


class LinearMeans:
    """q(z|x) = N(x * gains, 1): the posterior mean of unit u is gains_u * x_u."""

    def __init__(self, gains):
        self.gains = torch.tensor(gains, dtype=torch.float64)

    def posterior(self, x):
        return Independent(Normal(x * self.gains, torch.ones_like(x)), 1)

    def prior(self):
        return Independent(Normal(torch.zeros(len(self.gains), dtype=torch.float64), 1.0), 1)

    def likelihood(self, z):
        return Independent(Normal(z, 1.0), 1)


def test_active_units_counts_the_known_dimensions():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 5, generator=gen, dtype=torch.float64)
    x = (x - x.mean(0)) / x.std(0, correction=0)  # population variance exactly 1 per column
    gains = [1.0, 0.0, 0.2, 0.1, 0.05]  # variances 1, 0, 0.04, 0.01 (not > 0.01), 0.0025
    count, variances = active_units(LinearMeans(gains), x)
    torch.testing.assert_close(variances, torch.tensor(gains, dtype=torch.float64) ** 2)
    assert count == 2
    assert active_units(LinearMeans(gains), x, threshold=0.009)[0] == 3


def test_active_units_per_layer():
    model = LinearMeans([1.0, 0.0, 0.5, 0.5])
    model.latent_layers = [1, 3]
    x = torch.tensor([[1.0, 1, 1, 1], [-1.0, -1, -1, -1]], dtype=torch.float64)
    assert active_units(model, x)[0] == [1, 2]


@pytest.fixture(scope="module")
def one_dim():
    loc = torch.tensor([[-1.5], [-0.2], [0.4], [2.0], [0.9]])
    scale = torch.tensor([[0.3], [0.5], [1.0], [0.2], [0.7]])
    return TablePosteriors(loc, scale)


def _quadrature(loc, scale):
    """avg KL, mutual information and marginal KL of 1-D Gaussian posteriors by numerical integration."""
    loc, scale = loc.ravel().numpy(), scale.ravel().numpy()
    q_i = [stats.norm(m, s) for m, s in zip(loc, scale)]
    q = lambda z: np.mean([d.pdf(z) for d in q_i], axis=0)  # noqa: E731
    p = stats.norm(0, 1)
    points = sorted(loc)
    marginal = integrate.quad(lambda z: q(z) * (np.log(q(z)) - p.logpdf(z)), -12, 12, points=points, limit=200)[0]
    mi = np.mean(
        [
            integrate.quad(lambda z, d=d: d.pdf(z) * (d.logpdf(z) - np.log(q(z))), -12, 12, points=points, limit=200)[0]
            for d in q_i
        ]
    )
    avg_kl = np.mean(0.5 * (scale**2 + loc**2 - 1) - np.log(scale))
    return avg_kl, mi, marginal


def test_elbo_surgery_matches_quadrature(one_dim):
    avg_kl, mi, marginal = _quadrature(one_dim.loc, one_dim.scale)
    got = elbo_surgery(one_dim, one_dim.data(), n_samples=40_000, seed=0)
    assert got["avg_kl"] == pytest.approx(avg_kl, abs=1e-12)
    assert abs(got["mutual_info"] - mi) < Z * got["mutual_info_se"]
    assert abs(got["marginal_kl"] - marginal) < Z * got["marginal_kl_se"]
    assert 0 <= got["mutual_info"] <= math.log(5)
    assert got["log_n"] == pytest.approx(math.log(5))


def test_elbo_surgery_identity_and_bounds_in_many_dimensions():
    """avg KL = MI + marginal KL up to MC error; 0 <= MI <= log N, even for well-separated posteriors."""
    gen = torch.Generator().manual_seed(1)
    model = TablePosteriors(3 * torch.randn(300, 8, generator=gen), 0.05 + torch.rand(300, 8, generator=gen))
    got = elbo_surgery(model, model.data(), seed=0)
    assert abs(got["avg_kl"] - got["mutual_info"] - got["marginal_kl"]) < Z * got["mc_avg_kl_se"]
    assert 0 <= got["mutual_info"] <= math.log(300) + 1e-9
    assert got["mutual_info"] > math.log(300) - 0.1  # separated posteriors: the index is nearly known


def test_elbo_surgery_rejects_non_gaussian_posterior():
    class Mixed(LinearMeans):
        def posterior(self, x):
            return MixtureSameFamily(
                Categorical(logits=torch.zeros(len(x), 2, dtype=torch.float64)),
                Independent(Normal(x[:, None].expand(-1, 2, -1), 1.0), 1),
            )

    with pytest.raises(TypeError, match="diagonal Gaussian posterior"):
        elbo_surgery(Mixed([1.0]), torch.zeros(3, 1, dtype=torch.float64))


@pytest.mark.parametrize("shape,k,d", [((7,), 3, 2), ((5, 4), 10, 40), ((1,), 1, 1), ((300,), 513, 5)])
def test_mixture_log_prob_matches_torch_reference(shape, k, d):
    gen = torch.Generator().manual_seed(k)
    loc = torch.randn(k, d, generator=gen, dtype=torch.float64)
    scale = 0.1 + torch.rand(k, d, generator=gen, dtype=torch.float64)
    logits = torch.randn(k, generator=gen, dtype=torch.float64)
    z = 2 * torch.randn(*shape, d, generator=gen, dtype=torch.float64)
    reference = MixtureSameFamily(Categorical(logits=logits), Independent(Normal(loc, scale), 1)).log_prob(z)
    torch.testing.assert_close(DiagonalGaussianMixture(loc, scale, logits).log_prob(z), reference)
    torch.testing.assert_close(mixture_log_prob(z, loc, scale, torch.log_softmax(logits, 0), chunk_size=7), reference)


def test_mixture_sample_moments():
    loc = torch.tensor([[-2.0], [3.0]])
    mix = DiagonalGaussianMixture(loc, torch.tensor([[0.5], [0.5]]), torch.log(torch.tensor([0.25, 0.75])))
    z = mix.sample((20_000,))
    assert z.shape == (20_000, 1)
    expected_mean = 0.25 * -2 + 0.75 * 3
    sd = math.sqrt(0.25 + 0.25 * 4 + 0.75 * 9 - expected_mean**2)
    assert abs(float(z.mean()) - expected_mean) < Z * sd / math.sqrt(len(z))
    assert float(mix.mean) == pytest.approx(expected_mean)


def test_qew_samples_approach_true_posterior():
    """SIR from q_EW: k = 1 gives q itself; large k gives the exact PPCA posterior mean."""
    model = PPCA(mean_shift=0.3, scale_factor=1.5)
    x = model.sample_x(1)
    q = model.posterior(x).base_dist
    true_mean = q.loc - 0.3
    n = 3000
    for k, target in [(1, q.loc), (500, true_mean)]:
        z = qew_samples(model, x, k, n, seed=0)  # [n, 1, d]
        assert z.shape == (n, 1, 3)
        se = z.std(0) / math.sqrt(n)
        assert ((z.mean(0) - target).abs() < Z * se).all(), (k, z.mean(0), target)
