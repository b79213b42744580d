"""The PixelCNN decoder is autoregressive: logit i never depends on input pixels >= i, and does on earlier ones."""

import pytest
import torch
from torch.func import jacrev

from vaebench.families.pixelcnn import AutoregressiveBernoulli, MaskedConv2d, PixelCNN


def test_logit_i_depends_only_on_pixels_before_i():
    """The full Jacobian d logits / d x [D, D] of a randomly initialised net on an 8x8 image is zero on and above
    the diagonal (the mask), and every logit after the first depends on some earlier pixel (the test can fail the
    other way too: a mask hiding everything would pass the first check)."""
    torch.manual_seed(0)
    net = PixelCNN((8, 8), n_cond=3, channels=8, layers=3).double()
    cond = torch.randn(1, 3, dtype=torch.float64)
    x = torch.bernoulli(torch.full((1, 64), 0.5, dtype=torch.float64))
    jac = jacrev(lambda v: net(v, cond)[0])(x)[:, 0]  # [64 logits, 64 pixels]
    assert (jac.triu() == 0).all(), "a logit depends on its own or a later pixel"
    assert (jac[1:].abs().sum(1) > 0).all(), "a logit ignores every earlier pixel"


@pytest.mark.parametrize("mask, visible", [("A", 4), ("B", 5)])
def test_masks_keep_the_rows_above_and_the_left_of_the_centre(mask, visible):
    conv = MaskedConv2d(1, 1, 3, mask)
    assert conv.mask.flatten().tolist() == [1, 1, 1, 1] + [1] * (visible - 4) + [0] * (9 - visible)


def test_log_prob_is_the_sum_of_conditional_bernoullis_and_sums_to_one_on_a_tiny_image():
    """On a 2x2 image the 16 images' probabilities, each from one teacher-forced pass, sum to one (enumeration)."""
    torch.manual_seed(1)
    net = PixelCNN((2, 2), n_cond=2, channels=4, layers=1).double()
    cond = torch.randn(3, 2, dtype=torch.float64)  # a batch of three codes
    images = torch.tensor([[(v >> i) & 1 for i in range(4)] for v in range(16)], dtype=torch.float64)
    dist = AutoregressiveBernoulli(net, cond)
    log_p = torch.stack([dist.log_prob(img) for img in images])  # [16, 3]
    torch.testing.assert_close(torch.logsumexp(log_p, 0), torch.zeros(3, dtype=torch.float64))
    samples = dist.sample((2,))
    assert samples.shape == (2, 3, 4) and ((samples == 0) | (samples == 1)).all()


def test_pixel_hvae_evaluates_through_the_protocol_and_refuses_grey_or_non_square_settings():
    """The VampPrior paper's PixelHVAE shape in small: two levels, VampPrior, PixelCNN decoder. The protocol's
    estimator runs on it (no fused path: its likelihood has no linear head), in chunks of its K samples."""
    from vaebench.core.estimators import iwae_bounds, supports_fused
    from vaebench.families.vae import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig(x_dim=64, z_dim=3, hidden=16, depth=1, levels=2, prior="vamp", n_components=4)
    model = build_model(ModelConfig(**{**config.__dict__, "decoder": "pixelcnn"})).eval()
    assert not supports_fused(model)
    x = torch.bernoulli(torch.full((3, 64), 0.3))
    bounds = iwae_bounds(model, x, (1, 10, 1000), seed=0, memory_bytes=2**20)
    assert torch.isfinite(bounds).all() and (bounds[0] <= bounds[2] + 1).all()
    for bad in ({"likelihood": "logistic"}, {"x_dim": 60}):
        with pytest.raises(ValueError, match="pixelcnn"):
            ModelConfig(**{**config.__dict__, "decoder": "pixelcnn", **bad})
