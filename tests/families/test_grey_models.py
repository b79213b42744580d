"""Grey-level decoders inside the built-in models: trained and evaluated on Frey Faces, refused on the wrong data."""

import pytest
import torch

from vaebench.core.estimators import iwae_bounds
from vaebench.families.likelihoods import DiscretizedLogistic, DiscretizedNormal
from vaebench.families.vae import ModelConfig, build_model
from vaebench.protocol.datasets import DataError, load_dataset
from vaebench.protocol.evaluate import check_data_kind, evaluate
from vaebench.protocol.settings import Settings

SMALL = {"x_dim": 560, "z_dim": 4, "hidden": 32, "depth": 1}


@pytest.fixture(scope="module")
def frey():
    return load_dataset("frey-faces")


@pytest.mark.parametrize("likelihood, law", [("logistic", DiscretizedLogistic), ("gaussian", DiscretizedNormal)])
@pytest.mark.parametrize("levels, prior", [(1, "vamp"), (2, "standard")])
def test_grey_decoder_log_likelihood_is_the_binned_law(likelihood, law, levels, prior):
    """p(x|z) is the binned law of the decoder's outputs, per pixel, summed over the image; no fused path."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SMALL, levels=levels, prior=prior, n_components=3, likelihood=likelihood))
    assert model.likelihood_head is None
    z = torch.randn(5, 2, model.prior().event_shape[0])
    x = torch.randint(0, 256, (2, 560)) / 255
    out = model.output_layer(model.likelihood_features(z))
    loc, log_scale = out.chunk(2, -1)
    direct = law(torch.sigmoid(loc), log_scale.clamp(-7, 0).exp()).log_prob(x).sum(-1)
    torch.testing.assert_close(model.likelihood(z).log_prob(x), direct)


def test_training_steps_raise_the_elbo_and_the_protocol_runs(frey):
    """A few hundred Adam steps on Frey Faces lift the validation bound, and the protocol evaluates the model."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SMALL, likelihood="logistic"))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = float(iwae_bounds(model, frey.valid, (1,), seed=0).mean())
    for _ in range(300):
        x = frey.train[torch.randint(0, len(frey.train), (100,))]
        q = model.posterior(x)
        z = q.rsample()
        loss = -(model.likelihood(z).log_prob(x) + model.prior().log_prob(z) - q.log_prob(z)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(iwae_bounds(model, frey.valid, (1,), seed=0).mean())
    assert after > before + 100  # nats per 560-pixel image: from an untrained decoder's spread to a fitted one
    record, per = evaluate(model.eval(), frey, Settings(k=50, n_test=40, surgery_samples=200))
    assert record.log_likelihood > record.elbo and (per["L_50"] <= 0).all()  # discrete masses: log p(x) <= 0


def test_decoders_refuse_the_other_kind_of_data(frey):
    digits = load_dataset("digits")
    bernoulli = build_model(ModelConfig(**{**SMALL, "x_dim": 560}))
    with pytest.raises(DataError, match="Bernoulli decoder .* frey-faces holds 8-bit grey levels"):
        check_data_kind(bernoulli, frey, frey.test[:1], "b")
    grey = build_model(ModelConfig(**{**SMALL, "x_dim": 64}, likelihood="gaussian"))
    with pytest.raises(DataError, match="decoder over 256 grey levels, but digits is binary"):
        check_data_kind(grey, digits, digits.test[:1], "g")
    with pytest.raises(DataError, match="decoder over 256 grey levels"):
        evaluate(grey, digits, Settings(k=5, n_test=3), surgery=False, name="g")
