"""The IWAE paper's two-stochastic-layer model: its posterior density is that of its sampler, its prior is a
normalised chain, its Bernoulli term takes the fused path, and the registry builds and checks it."""

import math

import pytest
import torch

from vaebench.core.estimators import iwae_bounds, log_weights_of_samples, supports_fused
from vaebench.families.two_layer import ChainPosterior
from vaebench.families.vae import ModelConfig, build_model

CHAIN = {"x_dim": 20, "z_dim": 4, "z2_dim": 2, "hidden": 8, "hidden2": 6, "depth": 2, "net": "tanh", "levels": 2}


def chain_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(**CHAIN, hierarchy="iwae")).double().eval()


def test_posterior_density_is_the_change_of_variables_of_its_sampler():
    """z = (mu1 + s1 e1, mu2(h1) + s2(h1) e2): log q(z) = log N(e; 0, I) - sum log s1 - sum log s2(h1), exactly."""
    model = chain_model()
    x = torch.bernoulli(torch.full((3, 20), 0.4, dtype=torch.float64))
    q = model.posterior(x)
    assert isinstance(q, ChainPosterior) and q.event_shape == (6,)
    eps = torch.randn(7, 3, 6, dtype=torch.float64)
    z = q.rsample_from_noise(eps)
    s1 = model.q_h1(x)[1]
    s2 = model.q_h2(z[..., :4])[1]
    direct = -0.5 * eps.square().sum(-1) - 3 * math.log(2 * math.pi) - s1.log().sum(-1) - s2.log().sum(-1)
    torch.testing.assert_close(q.log_prob(z), direct)
    assert model.latent_layers == [4, 2]


def test_prior_is_normalised():
    """E_{q}[p(z) / q(z)] over an over-dispersed Gaussian q covering the prior is 1 (importance sampling, 4e5 draws,
    3 standard errors of the weights' mean)."""
    model = chain_model()
    prior = model.prior()
    q = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(6), 3 * torch.ones(6)), 1)
    z = q.sample((400_000,)).double()
    with torch.no_grad():
        w = torch.exp(prior.log_prob(z) - q.log_prob(z))
    assert abs(float(w.mean()) - 1) < 3 * float(w.std()) / math.sqrt(len(w))
    assert prior.sample((5,)).shape == (5, 6)


def test_fused_bernoulli_term_equals_the_likelihood_and_bounds_are_finite():
    model = chain_model()
    assert supports_fused(model)
    x = torch.bernoulli(torch.full((3, 20), 0.4, dtype=torch.float64))
    q, prior = model.posterior(x), model.prior()
    z = q.rsample((5,))
    direct = model.likelihood(z).log_prob(x) + prior.log_prob(z) - q.log_prob(z)
    torch.testing.assert_close(log_weights_of_samples(model, q, prior, z, x), direct)
    bounds = iwae_bounds(model, x, (1, 10, 100), seed=0)
    assert torch.isfinite(bounds).all()


@pytest.mark.parametrize("bad", [{"prior": "vamp"}, {"levels": 1}, {"likelihood": "logistic"}])
def test_chain_settings_are_checked(bad):
    with pytest.raises(ValueError, match="hierarchy = 'iwae'"):
        ModelConfig(**{**CHAIN, "hierarchy": "iwae", **bad})


def test_an_entry_with_settings_that_do_not_fit_together_is_named(tmp_path):
    from vaebench.protocol.registry import RegistryError, read_entry

    entry = tmp_path / "entry.toml"
    entry.write_text(
        'name = "bad"\ndataset = "mnist"\n[model]\nfamily = "vae"\nlevels = 2\nhierarchy = "iwae"\nprior = "vamp"\n'
    )
    with pytest.raises(RegistryError, match=r"entry.toml.*\[model\] hierarchy = 'iwae'"):
        read_entry(entry)
