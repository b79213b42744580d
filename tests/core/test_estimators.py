"""The IWAE bounds and the ELBO against probabilistic PCA, whose log p(x) is known in closed form.

Tolerances are 4 Monte Carlo standard errors, estimated from the same log-weights with the delta
method: for r = w / p(x), Var(L_K) ~ Var(r) / K and E L_K - log p(x) ~ -Var(r) / (2K).
"""

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from tests.closed_form import PPCA
from vaebench.core.estimators import NonFiniteLogWeight, elbo, iwae_bound, iwae_bounds, log_weights
from vaebench.core.noise import NOISE_BLOCK

Z = 4.0  # standard errors allowed: a false alarm about once in 16,000 runs


@pytest.fixture(scope="module")
def wrong_q():
    """PPCA with a shifted, too-wide diagonal posterior (bounded importance weights)."""
    model = PPCA(mean_shift=0.3, scale_factor=1.5)
    return model, model.sample_x(64)


def test_exact_posterior_gives_log_marginal_at_k1():
    model = PPCA()
    x = model.sample_x(32)
    exact = model.log_marginal(x)
    torch.testing.assert_close(iwae_bound(model, x, 1, seed=0), exact, rtol=0, atol=1e-10)
    lw = log_weights(model, x, 10, seed=0)  # every weight equals p(x) exactly
    torch.testing.assert_close(lw, exact.expand(10, -1), rtol=0, atol=1e-10)


def test_elbo_with_analytic_kl_is_log_marginal_at_exact_posterior():
    """ELBO = E_q log p(x|z) - KL: the KL is exact, the reconstruction a mean of n samples."""
    model, n = PPCA(), 4000
    x = model.sample_x(32)
    reconstruction = model.likelihood(model.posterior(x).sample((n,))).log_prob(x)
    se = reconstruction.std(0) / math.sqrt(n)
    error = elbo(model, x, n_samples=n, seed=0) - model.log_marginal(x)
    assert (error.abs() < Z * se).all(), error / se


def test_exact_posterior_float32_to_float_precision():
    model = PPCA(dtype=torch.float32)
    x = model.sample_x(32)
    exact = model.log_marginal(x)
    assert torch.allclose(iwae_bound(model, x, 1, seed=0).double(), exact, rtol=1e-6, atol=1e-4)


def test_full_covariance_posterior_any_distribution():
    """A non-diagonal exact posterior (MultivariateNormal) goes through the generic path."""
    gen = torch.Generator().manual_seed(3)
    W, b, sigma = torch.randn(5, 2, generator=gen, dtype=torch.float64), torch.zeros(5, dtype=torch.float64), 0.7

    class Skewed:
        def posterior(self, x):
            m = W.T @ W + sigma**2 * torch.eye(2, dtype=torch.float64)
            minv = torch.linalg.inv(m)
            return MultivariateNormal((x - b) @ (minv @ W.T).T, covariance_matrix=sigma**2 * minv)

        def prior(self):
            return Independent(Normal(torch.zeros(2, dtype=torch.float64), 1.0), 1)

        def likelihood(self, z):
            return Independent(Normal(z @ W.T + b, sigma), 1)

    x = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    exact = MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(5, dtype=torch.float64)).log_prob(x)
    torch.testing.assert_close(iwae_bound(Skewed(), x, 7), exact, rtol=0, atol=1e-9)


def test_l5000_matches_closed_form_within_standard_error(wrong_q):
    model, x = wrong_q
    k = 5000
    exact = model.log_marginal(x)
    lw = log_weights(model, x, k, seed=0)
    r = torch.exp(lw - exact)  # [k, B], mean 1 in expectation
    var_r = r.var(dim=0)
    bias = float(-(var_r / (2 * k)).mean())
    se = float((var_r / k).sum().sqrt() / len(x))
    error = float((iwae_bound(model, x, k, seed=0) - exact).mean())
    assert abs(error - bias) < Z * se + 1e-12, (error, bias, se)
    assert error < Z * se  # a lower bound on average


def test_bound_increases_with_k(wrong_q):
    model, x = wrong_q
    ks = (1, 5, 50, 500, 5000)
    bounds = iwae_bounds(model, x, ks, seed=1)  # [5, B]
    exact = model.log_marginal(x)
    for i in range(3):
        gain = bounds[i + 1] - bounds[i]
        assert gain.mean() > Z * gain.std() / math.sqrt(len(gain)), (ks[i], ks[i + 1])
    last = bounds[4] - bounds[3]
    assert last.mean() > -Z * last.std() / math.sqrt(len(last))
    gap = bounds[4] - exact
    assert gap.mean() < Z * gap.std() / math.sqrt(len(gap))


def test_ladder_matches_separate_bounds(wrong_q):
    model, x = wrong_q
    ladder = iwae_bounds(model, x, (50, 500), seed=2)
    torch.testing.assert_close(ladder[1], iwae_bound(model, x, 500, seed=2), rtol=0, atol=1e-10)
    first_group = iwae_bound(model, x, 50, seed=2)  # samples 0..49 of each example's stream
    lw = log_weights(model, x, 500, seed=2)
    torch.testing.assert_close(first_group, torch.logsumexp(lw[:50], 0) - math.log(50), rtol=0, atol=1e-10)
    groups = torch.logsumexp(lw.reshape(10, 50, -1), 1) - math.log(50)
    torch.testing.assert_close(ladder[0], groups.mean(0), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="divide"):
        iwae_bounds(model, x, (3, 10), seed=0)


@pytest.mark.parametrize("batch,chunk", [(64, 1500), (10, 1000), (7, 500)])
def test_seeded_bound_independent_of_batch_and_chunk(wrong_q, batch, chunk):
    """Seeded chunks are whole noise blocks of 500: chunks of 1500, 1000 + 500 and 3 x 500 samples."""
    model, x = wrong_q
    reference = iwae_bound(model, x, 1500, seed=5, chunk_size=1500)
    pieces = [
        iwae_bound(model, x[i : i + batch], 1500, chunk, seed=5, index=torch.arange(i, min(i + batch, len(x))))
        for i in range(0, len(x), batch)
    ]
    torch.testing.assert_close(torch.cat(pieces), reference, rtol=0, atol=1e-10)


def test_small_memory_budget_splits_the_batch_with_the_same_numbers(wrong_q, monkeypatch):
    """Seeded chunks hold whole noise blocks (500 samples), so a budget of a few such chunks makes
    ``iwae_bounds`` evaluate the examples a few at a time: same bounds and variances as all at once."""
    model, x = wrong_q
    ks = (1, 5, 50, 500)
    whole, whole_var = iwae_bounds(model, x, ks, seed=3, with_variance=True, memory_bytes=2**40)
    batches = []
    posterior = model.posterior
    monkeypatch.setattr(model, "posterior", lambda xb: batches.append(len(xb)) or posterior(xb))
    rows_of_three = 16 * x.shape[1] * NOISE_BLOCK * 3  # three examples' chunks of one noise block
    split, split_var = iwae_bounds(model, x, ks, seed=3, with_variance=True, memory_bytes=rows_of_three)
    assert batches == [3] * 21 + [1]
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-10)
    torch.testing.assert_close(split_var, whole_var, rtol=0, atol=1e-12)


def test_precision_at_large_k_float32():
    """Float32 log-weights around -500 nats: ten chunks of 500 combined in float64 give the one
    float64 logsumexp over all 5000, to the last bit of the float32 result."""
    model = PPCA(dim_x=400, dim_z=3, sigma=0.05, dtype=torch.float32)
    x = model.sample_x(4)
    lw = log_weights(model, x, 5000, seed=0).double()
    reference = torch.logsumexp(lw, 0) - math.log(5000)
    got = iwae_bound(model, x, 5000, seed=0, chunk_size=500)
    assert got.dtype == torch.float32
    assert reference.abs().min() > 100
    torch.testing.assert_close(got.double(), reference.float().double(), rtol=0, atol=0)


def test_model_log_weights_hook_is_used():
    class Hooked(PPCA):
        def log_weights(self, x, k):
            return torch.full((k, len(x)), -3.0, dtype=torch.float64)

    model = Hooked()
    x = model.sample_x(3)
    torch.testing.assert_close(iwae_bound(model, x, 10), torch.full((3,), -3.0, dtype=torch.float64))


def test_non_finite_weight_names_model_and_example():
    class Broken(PPCA):
        def likelihood(self, z):
            loc = z @ self.W.T + self.b
            loc[:, 2] = float("nan")
            return Independent(Normal(loc, self.sigma, validate_args=False), 1)

    model = Broken()
    with pytest.raises(NonFiniteLogWeight, match=r"model broken-ppca.*example 12"):
        iwae_bound(model, model.sample_x(4), 5, seed=0, index=torch.arange(10, 14), name="broken-ppca")


def test_k_must_be_positive(wrong_q):
    model, x = wrong_q
    with pytest.raises(ValueError, match="at least 1"):
        iwae_bound(model, x, 0)


def test_interface_errors_name_missing_methods():
    with pytest.raises(TypeError, match="missing posterior, prior, likelihood"):
        iwae_bound(object(), torch.zeros(2, 3), 2)


def test_monte_carlo_variance_matches_spread_over_seeds(wrong_q):
    """``with_variance``: the predicted Var(L_m) matches the variance of L_m over independent seeds.

    With R replicate seeds the sample variance has relative standard error sqrt(2 / (R - 1)) (for
    near-Gaussian estimates), so the ratio must be within Z of those of 1, per k, over the examples.
    """
    model, x = wrong_q
    x, reps = x[:16], 300
    runs = [iwae_bounds(model, x, (50, 500), seed=s, with_variance=True) for s in range(reps)]
    bounds = torch.stack([b for b, _ in runs])  # [R, 2, B]
    predicted = torch.stack([v for _, v in runs]).mean(0)  # [2, B]
    ratio = bounds.var(0).sum(-1) / predicted.sum(-1)  # pooled over examples
    assert ((ratio - 1).abs() < Z * math.sqrt(2 / (reps - 1))).all(), ratio
