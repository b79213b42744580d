"""The Triton kernels of ``vaebench.core.kernels`` against plain PyTorch references computed in float64.

Without a GPU the kernels run under the Triton interpreter, which Triton enables only if
``TRITON_INTERPRET=1`` is set before ``triton`` is first imported: ``tests/conftest.py`` sets it
when there is no CUDA device (``vaebench.core.kernels`` imports triton only on first use). With CUDA the
kernels are compiled and these tests check the GPU build. If something imported ``triton`` earlier
without the flag, the module is skipped and the reason says so.

Tolerance: 1e-3 nats per row. With extreme logits (|l| ~ 50..200, D = 784) a row's log-likelihood
is ~ -4e4 nats, where one float32 ulp is already 4e-3 nats: those cases allow 1e-6 relative on top.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    MixtureSameFamily,
    Normal,
)

from tests.closed_form import PPCA
from vaebench.core import kernels
from vaebench.core.estimators import iwae_bounds, log_weights_of_samples, supports_fused
from vaebench.core.kernels import bernoulli_log_lik, mixture_log_prob
from vaebench.families.vae import ModelConfig, build_model

UNAVAILABLE = kernels._unavailable_reason()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"the triton backend cannot run: {UNAVAILABLE}")

ATOL = 1e-3
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # compiled kernels need CUDA tensors


def decoder_case(k: int, b: int, h: int, d: int, logit_scale: float, seed: int):
    """Features [k, b, h], weight [d, h], bias [d], binary x [b, d]; logits have std ~ logit_scale."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(k, b, h, generator=gen)
    weight = torch.randn(d, h, generator=gen) * (logit_scale / math.sqrt(h))
    bias = torch.randn(d, generator=gen)
    x = (torch.rand(b, d, generator=gen) < 0.5).float()
    return features.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE), x.to(DEVICE)


def check_bernoulli(k: int, b: int, h: int, d: int, logit_scale: float = 3.0, seed: int = 0, rtol: float = 0.0):
    features, weight, bias, x = decoder_case(k, b, h, d, logit_scale, seed)
    got = bernoulli_log_lik(features, weight, bias, x, backend="triton")
    want = bernoulli_log_lik(features.double(), weight.double(), bias.double(), x.double(), backend="torch")
    assert got.shape == (k, b) and got.dtype == torch.float32
    error = (got.double() - want).abs()
    assert (error <= ATOL + rtol * want.abs()).all(), f"max error {error.max().item():.3g} nats"


@pytest.mark.parametrize(
    "k, b, h, d",
    [
        (3, 5, 300, 784),  # the MNIST decoder head: D, H not multiples of the blocks
        (2, 67, 300, 784),  # K*B = 134: three row blocks, the last partial
        (7, 11, 33, 130),
        (1, 1, 17, 5),
        (1, 3, 1, 1),
        (4, 16, 64, 128),  # exact multiples of the blocks
    ],
)
def test_bernoulli_kernel_matches_float64(k, b, h, d):
    check_bernoulli(k, b, h, d)


@pytest.mark.parametrize("k, b, h, d", [(3, 5, 300, 784), (2, 9, 17, 784), (4, 4, 64, 5)])
def test_bernoulli_kernel_extreme_logits(k, b, h, d):
    """|l| ~ 50..200: a naive log(1 + exp(l)) overflows in float32; the stable softplus does not."""
    check_bernoulli(k, b, h, d, logit_scale=125.0, rtol=1e-6)


@settings(max_examples=8, deadline=None)
@given(
    k=st.integers(1, 4),
    b=st.integers(1, 9),
    h=st.integers(1, 80),
    d=st.integers(1, 200),
    logit_scale=st.sampled_from([0.1, 3.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_bernoulli_kernel_random_shapes(k, b, h, d, logit_scale, seed):
    check_bernoulli(k, b, h, d, logit_scale, seed)


def test_bernoulli_torch_backend_is_bernoulli_log_prob():
    features, weight, bias, x = (t.double() for t in decoder_case(3, 4, 20, 30, 3.0, 1))
    want = Independent(Bernoulli(logits=features @ weight.T + bias), 1).log_prob(x)
    torch.testing.assert_close(bernoulli_log_lik(features, weight, bias, x), want)


def test_bernoulli_kernel_strided_inputs():
    """Non-contiguous features, a transposed weight and a column slice of x go through their strides."""
    features, weight, bias, x = decoder_case(3, 6, 40, 50, 3.0, 2)
    wide_x = torch.cat([x, 1 - x], dim=1)
    got = bernoulli_log_lik(
        features.transpose(0, 1).contiguous().transpose(0, 1),
        weight.T.contiguous().T,
        bias,
        wide_x[:, :50],
        backend="triton",
    )
    torch.testing.assert_close(got, bernoulli_log_lik(features, weight, bias, x), rtol=0, atol=ATOL)


def mixture_case(c: int, d: int, seed: int, shape=(3, 7)):
    gen = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(*shape, d, generator=gen)
    loc = torch.randn(c, d, generator=gen)
    scale = 0.5 + torch.rand(c, d, generator=gen)
    log_mix = torch.log_softmax(torch.randn(c, generator=gen), dim=0)
    return z.to(DEVICE), loc.to(DEVICE), scale.to(DEVICE), log_mix.to(DEVICE)


@pytest.mark.parametrize("c", [1, 500, 513])
@pytest.mark.parametrize("d", [1, 40, 50])
def test_mixture_kernel_matches_references(c, d):
    z, loc, scale, log_mix = mixture_case(c, d, seed=c + d)
    got = mixture_log_prob(z, loc, scale, log_mix, backend="triton")
    assert got.shape == z.shape[:-1] and got.dtype == torch.float32
    torch.testing.assert_close(got, mixture_log_prob(z, loc, scale, log_mix, backend="torch"), rtol=0, atol=ATOL)
    exact = MixtureSameFamily(
        Categorical(logits=log_mix.double()), Independent(Normal(loc.double(), scale.double()), 1)
    ).log_prob(z.double())
    torch.testing.assert_close(got.double(), exact, rtol=0, atol=ATOL)


def test_mixture_kernel_many_rows_and_zero_weight_components():
    """S = 70 rows (two row blocks); the first 64 components, a whole tile, have weight exp(-inf) = 0."""
    z, loc, scale, log_mix = mixture_case(130, 6, seed=5, shape=(70,))
    log_mix[:64] = -math.inf
    got = mixture_log_prob(z, loc, scale, log_mix, backend="triton")
    want = mixture_log_prob(z.double(), loc.double(), scale.double(), log_mix.double(), backend="torch")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("prior", ["standard", "mog", "vamp"])
@pytest.mark.parametrize("levels", [1, 2])
def test_log_weights_of_samples_match_plain_path(prior, levels):
    torch.manual_seed(0)
    config = ModelConfig(
        x_dim=784, z_dim=4, hidden=32, depth=2, net="gated", prior=prior, n_components=7, levels=levels
    )
    model = build_model(config).to(DEVICE).eval()
    x = (torch.rand(5, 784) < 0.3).float().to(DEVICE)
    with torch.no_grad():
        q, p = model.posterior(x), model.prior()
        z = q.sample((3,))
        plain = model.likelihood(z).log_prob(x) + p.log_prob(z) - q.log_prob(z)
        assert supports_fused(model)
        for backend in ("torch", "triton"):
            torch.testing.assert_close(log_weights_of_samples(model, q, p, z, x, backend), plain, rtol=0, atol=ATOL)


def test_log_weights_of_samples_fall_back_for_other_models():
    model = PPCA()
    x = model.sample_x(4)
    q, p = model.posterior(x), model.prior()
    z = q.sample((2,))
    assert not supports_fused(model)
    plain = model.likelihood(z).log_prob(x) + p.log_prob(z) - q.log_prob(z)
    torch.testing.assert_close(log_weights_of_samples(model, q, p, z, x, "triton"), plain)


class LaunchSpy:
    """Stands in for a jitted kernel: records each launch's grid and keywords, then launches the real one."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((grid, kwargs))
            return self.kernel[grid](*args, **kwargs)

        return launch


def test_kernel_options_reach_every_launch(monkeypatch):
    """``kernel_options`` go from iwae_bounds through log_weights_of_samples to both kernels' launches
    (precision, tiles, grid); without them the committed defaults launch, and the bound is the same."""
    spies = {name: LaunchSpy(kernels._jitted[name]) for name in ("_bernoulli_kernel", "_mixture_kernel")}
    for name, spy in spies.items():
        monkeypatch.setitem(kernels._jitted, name, spy)
    monkeypatch.setattr(kernels, "_unavailable_reason", lambda: None)  # its mode check would see the spies
    torch.manual_seed(0)
    model = (
        build_model(ModelConfig(x_dim=64, z_dim=4, hidden=32, depth=2, net="gated", prior="vamp", n_components=7))
        .to(DEVICE)
        .eval()
    )
    x = (torch.rand(3, 64) < 0.3).float().to(DEVICE)
    options = kernels.KernelOptions(
        precision="tf32x3",
        bernoulli=kernels.Tiles(block_m=16, block_n=32, block_k=16),
        mixture=kernels.Tiles(block_m=32, block_n=16, block_k=16, num_warps=2),
    )
    ours = iwae_bounds(model, x, (1, 10), seed=0, index=torch.arange(3), backend="triton", kernel_options=options)
    rows = 10 * 3
    assert spies["_bernoulli_kernel"].launches == [
        ((2,), {"PRECISION": "tf32x3", "BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16})
    ]
    assert spies["_mixture_kernel"].launches == [
        ((1,), {"PRECISION": "tf32x3", "BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 2})
    ]
    for spy in spies.values():
        spy.launches.clear()
    committed = iwae_bounds(model, x, (1, 10), seed=0, index=torch.arange(3), backend="triton")
    assert [kw for _, kw in spies["_bernoulli_kernel"].launches] == [
        {"PRECISION": "ieee", **kernels.BERNOULLI_TILES.launch()}
    ]
    assert [kw for _, kw in spies["_mixture_kernel"].launches] == [
        {"PRECISION": "ieee", **kernels.MIXTURE_TILES.launch()}
    ]
    assert spies["_bernoulli_kernel"].launches[0][0] == (math.ceil(rows / kernels.BERNOULLI_TILES.block_m),)
    # the interpreter ignores the precision; compiled, tf32x3 stays within float32 accumulation error
    torch.testing.assert_close(ours, committed, rtol=0, atol=ATOL)


def test_unavailable_triton_names_the_fix(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "TRITON_INTERPRET=1" in kernels.triton_problem()
    features, weight, bias, x = decoder_case(1, 2, 3, 4, 1.0, 0)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        bernoulli_log_lik(features, weight, bias, x, backend="triton")
    assert bernoulli_log_lik(features, weight, bias, x).shape == (1, 2)
    with pytest.raises(ValueError, match="unknown backend"):
        bernoulli_log_lik(features, weight, bias, x, backend="cuda")


def test_cpu_tensors_on_a_cuda_machine_name_the_fix(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(kernels, "_unavailable_reason", lambda: None)  # as on a machine with CUDA
    assert kernels.triton_problem("cuda") is None and kernels.triton_problem() is None
    assert "CUDA tensors, not cpu ones: put them on the GPU" in kernels.triton_problem("cpu")
    features, weight, bias, x = decoder_case(1, 2, 3, 4, 1.0, 0)
    with pytest.raises(RuntimeError, match="CUDA tensors, not cpu.*--device cuda.*backend='torch'"):
        bernoulli_log_lik(features.cpu(), weight.cpu(), bias.cpu(), x.cpu(), backend="triton")
    with pytest.raises(RuntimeError, match="Philox.*CUDA tensors, not cpu.*--device cpu"):
        kernels.keyed_normals(0, torch.arange(2), 0, 4, 3, "cpu")


def test_keyed_normals_do_not_depend_on_batching_or_chunking():
    whole = kernels.keyed_normals(3, torch.arange(6), 0, 120, 7, DEVICE)
    assert whole.shape == (120, 6, 7) and whole.dtype == torch.float32
    part = kernels.keyed_normals(3, torch.tensor([4, 1]), 37, 101, 7, DEVICE)
    assert torch.equal(part, whole[37:101][:, [4, 1]])


def test_keyed_normals_streams_differ_by_seed_and_example():
    a = kernels.keyed_normals(0, torch.tensor([0, 1]), 0, 50, 8, DEVICE)
    b = kernels.keyed_normals(1, torch.tensor([0, 1]), 0, 50, 8, DEVICE)
    assert not torch.isclose(a[:, 0], a[:, 1]).any() and not torch.isclose(a, b).any()


def test_keyed_normals_are_standard_normal():
    """40,000 values: mean, variance, lag-one correlations and the KS statistic, each against its sampling
    distribution at a false-alarm rate of about 1e-4 (4 standard errors; KS p-value above 1e-4)."""
    from scipy import stats

    z = kernels.keyed_normals(0, torch.arange(4), 0, 1000, 10, DEVICE).double().cpu()
    flat, n = z.flatten(), z.numel()
    assert abs(flat.mean()) < 4 / math.sqrt(n)
    assert abs(flat.var() - 1) < 4 * math.sqrt(2 / n)
    for a, b in ((z[1:], z[:-1]), (z[..., 1:], z[..., :-1]), (z[:, 1:], z[:, :-1])):  # sample, coordinate, example
        assert abs((a * b).mean()) < 4 / math.sqrt(a.numel())
    assert stats.kstest(flat.numpy(), "norm").pvalue > 1e-4


def test_keyed_normals_reject_keys_out_of_range():
    with pytest.raises(ValueError, match="seed"):
        kernels.keyed_normals(2**23, torch.arange(2), 0, 5, 3, DEVICE)
    with pytest.raises(ValueError, match="indices"):
        kernels.keyed_normals(0, torch.tensor([-1]), 0, 5, 3, DEVICE)
    with pytest.raises(ValueError, match="2\\*\\*31"):
        kernels.keyed_normals(0, torch.arange(2), 0, 2**28, 8, DEVICE)
    with pytest.raises(ValueError, match="CUDA grid limit"):
        kernels.keyed_normals(0, torch.arange(kernels.MAX_GRID_Y + 1), 0, 1, 1, DEVICE)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA noise path of iwae_bounds needs a GPU")
def test_cuda_bounds_do_not_depend_on_batch_or_chunk_size():
    """Same samples whatever the batching (Triton's keyed Philox); float32 layers of other batch shapes may
    round differently (cuBLAS picks kernels by shape), hence the float32 tolerance ATOL."""
    torch.manual_seed(0)
    model = (
        build_model(ModelConfig(x_dim=784, z_dim=8, hidden=32, depth=2, net="gated", prior="vamp", n_components=7))
        .to(DEVICE)
        .eval()
    )
    x = (torch.rand(6, 784) < 0.3).float().to(DEVICE)
    index = torch.arange(10, 16)
    whole = iwae_bounds(model, x, (1, 50, 1000), seed=0, index=index, backend="triton")
    for chunk in (1000, 500, 100):
        halves = [
            iwae_bounds(model, x[i : i + 3], (1, 50, 1000), chunk, seed=0, index=index[i : i + 3], backend="triton")
            for i in (0, 3)
        ]
        torch.testing.assert_close(torch.cat(halves, dim=1), whole, rtol=0, atol=ATOL)
