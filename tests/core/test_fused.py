"""The compiled log-weight path (``backend="compiled"``, ``vaebench.core.fused``) and the seeded noise's values.

Compiling is slow the first time on 2 CPU cores (inductor builds C++ kernels: about 2 minutes for this file
with an empty inductor cache, 20-30 s once ``/tmp/torchinductor_<user>`` holds them); every family is compiled
once and then reused for every shape check.

Tolerance (:func:`tolerance`). Both paths add up the same terms in floating point (eps the machine epsilon,
u = eps / 2 the unit roundoff), in different orders and with different elementary functions. With S the sum
of the absolute values of everything summed into one log-weight (:func:`magnitude`: each pixel's |x l| and
softplus(l), each logit's product |h| . |W| + |b|, and |log p(z)|, |log q(z|x)| plus one per latent
coordinate, Gaussian log-densities adding terms of one sign and O(1) constants):

- per pixel, the logits differ by at most eps (|h| . |W| + |b|) (the bias added in or after the product), and
  a term's derivative in its logit is at most 1 in magnitude; x l - softplus(l) rounds within 2 eps |t| in
  the eager path; the compiled path's log-of-products (``vaebench.core.fused.bernoulli_terms``) rounds each
  factor and each product once, at most eps per pixel in absolute value, which is at most 2.5 eps S_j since
  S_j >= max(|l|, softplus(l)) >= 0.4 for every logit: together at most 6.5 eps S_j per pixel;
- a sum of n terms in any blocked order errs by at most (n_lane + log2 n) u sum |t|, where n_lane = n / 16
  is what one of inductor's 16 vector lanes adds in sequence (ATen's cascade sum errs less), so the two
  orders differ by at most (n / 16 + log2 n) eps sum |t|: 59 eps for the 784 pixels of MNIST, less for the
  latent coordinates.

So the two log-weights differ by at most 65.5 eps S: the tests allow 72 eps S. (Measured: about 1 eps S.)
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import vaebench.core.fused as fused
from tests.closed_form import PPCA
from vaebench.core.estimators import (
    BACKENDS,
    iwae_bounds,
    log_weights,
    log_weights_of_samples,
    sample_posterior,
)
from vaebench.core.mixture import DiagonalGaussianMixture
from vaebench.core.noise import NOISE_BLOCK, seeded_noise
from vaebench.families.vae import ModelConfig, build_model

EPS32 = torch.finfo(torch.float32).eps
FAMILIES = [(levels, prior) for levels in (1, 2) for prior in ("standard", "mog", "vamp")]


def small_model(levels: int, prior: str) -> torch.nn.Module:
    config = ModelConfig(x_dim=20, z_dim=3, hidden=8, depth=2, prior=prior, n_components=5, levels=levels)
    torch.manual_seed(levels * 10 + len(prior))
    return build_model(config).eval()


def images(n: int, dim: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, dim), 0.5), generator=torch.Generator().manual_seed(seed))


def magnitude(model, q, prior, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """S [K, B] of the module docstring, in float64. A model without a Bernoulli head (PPCA) counts
    |log p(x|z)| plus one per pixel, as for the latent densities."""
    densities = prior.log_prob(z).double().abs() + q.log_prob(z).double().abs() + z.shape[-1]
    if not fused.has_bernoulli_head(model):
        return model.likelihood(z).log_prob(x).double().abs() + x.shape[-1] + densities
    head = model.likelihood_head
    h = model.likelihood_features(z).double()
    w, b = head.weight.double(), head.bias.double()
    logits = F.linear(h, w, b)
    x64 = x.double()
    pixels = (x64 * logits).abs() + F.softplus(logits) + F.linear(h.abs(), w.abs(), b.abs())
    return pixels.sum(-1) + densities


def tolerance(model, q, prior, z, x) -> torch.Tensor:
    return 72 * EPS32 * magnitude(model, q, prior, z, x)


def graphs() -> int:
    """Graphs dynamo has compiled in this process."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.fixture(autouse=True)
def fresh_fallback_state(monkeypatch):
    """Each test sees the fallback bookkeeping empty (what failed, what was said)."""
    monkeypatch.setattr(fused, "_failed", {})
    monkeypatch.setattr(fused, "_warned", set())


NEEDS_COMPILER = pytest.mark.skipif(
    fused.compile_problem() is not None, reason=f"cannot compile here: {fused.compile_problem()}"
)


def check_against_eager(model, x: torch.Tensor, prior, k: int) -> None:
    """Compiled and eager log-weights of the same k seeded samples agree within :func:`tolerance`."""
    q = model.posterior(x)
    z = sample_posterior(q, k, seed=0, index=torch.arange(len(x)))
    got = log_weights_of_samples(model, q, prior, z, x, backend="compiled")
    want = log_weights_of_samples(model, q, prior, z, x, backend="torch")
    assert got.shape == want.shape == (k, len(x)) and got.dtype == torch.float32
    gap, allowed = (got.double() - want.double()).abs(), tolerance(model, q, prior, z, x)
    assert (gap <= allowed).all(), f"largest gap {float(gap.max()):.2e}, {float((gap / allowed).max()):.2f} x tol"


@NEEDS_COMPILER
@pytest.mark.parametrize("levels, prior", FAMILIES)
@torch.no_grad()
def test_compiled_equals_eager_on_every_family_and_chunk_sizes_do_not_recompile(levels, prior):
    model = small_model(levels, prior)
    x = images(5)
    p = model.prior()
    with warnings.catch_warnings():
        warnings.simplefilter("error", fused.CompileFallbackWarning)  # a fallback would test nothing
        before = graphs()
        check_against_eager(model, x, p, 40)  # compiles (unless an earlier test did)
        first = graphs() - before
        for k in (23, 57):  # other chunk sizes: the sample dimension is dynamic from the first call
            check_against_eager(model, x, p, k)
        # chunked through iwae_bounds: chunks of 500, the same graph
        ks = (1, 10, 2 * NOISE_BLOCK)
        compiled = iwae_bounds(model, x, ks, NOISE_BLOCK, seed=1, backend="compiled")
        eager = iwae_bounds(model, x, ks, NOISE_BLOCK, seed=1, backend="torch")
        # L_m = log mean of w (summed in float64): off by at most the largest log-weight difference, bounded as
        # above on the same seeded samples, plus the float32 rounding of each result (u |L| each)
        q = model.posterior(x)
        z = sample_posterior(q, 2 * NOISE_BLOCK, seed=1, index=torch.arange(len(x)))
        allowed = tolerance(model, q, p, z, x).max(0).values + EPS32 * eager.double().abs()
        assert ((compiled.double() - eager.double()).abs() <= allowed).all()
    assert first <= 1
    assert graphs() - before == first, "a new chunk size compiled again"


@NEEDS_COMPILER
@torch.no_grad()
def test_a_new_batch_size_recompiles_at_most_once():
    """The first batch of another size makes the batch dimension symbolic (dynamo's automatic dynamic shapes);
    later sizes, and slices of a bigger batch, reuse that graph."""
    model = small_model(1, "vamp")
    x, p = images(7), model.prior()
    with warnings.catch_warnings():
        warnings.simplefilter("error", fused.CompileFallbackWarning)
        check_against_eager(model, x[:5].clone(), p, 40)
        before = graphs()
        for b in (3, 6, 2, 7):
            check_against_eager(model, x[:b], p, 31)  # slices (views) of x, as iwae_bounds' sub-batches are
    assert graphs() - before <= 1


@NEEDS_COMPILER
@torch.no_grad()
def test_outside_model_compiles_its_own_likelihood():
    """PPCA (tests/closed_form.py) has no Bernoulli head: its likelihood(z).log_prob(x), in float64, is traced."""
    model = PPCA(dim_x=6, dim_z=3, mean_shift=0.2, scale_factor=1.3)
    x = model.sample_x(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fused.CompileFallbackWarning)
        got = log_weights(model, x, 30, seed=0, backend="compiled")
    want = log_weights(model, x, 30, seed=0, backend="torch")
    assert got.dtype == torch.float64
    # float64 throughout: the derivation above with float64's eps (sums of at most 6 terms)
    q = model.posterior(x)
    z = sample_posterior(q, 30, seed=0, index=torch.arange(len(x)))
    allowed = 72 * torch.finfo(torch.float64).eps * magnitude(model, q, model.prior(), z, x)
    assert ((got - want).abs() <= allowed).all()


@torch.no_grad()
def test_without_a_cpp_compiler_it_runs_eagerly_and_says_so_once():
    try:
        from torch._inductor import config as inductor_config
        from torch._inductor import cpp_builder
    except ImportError:
        pytest.skip("this torch has no inductor")
    before = inductor_config.cpp.cxx
    cpp_builder.cpp_compiler_search.cache_clear()
    try:
        # torch's own patch: pytest's monkeypatch undo leaves this setting hidden, so every later compile in the
        # session would fall back (AttributeError)
        with inductor_config.patch({"cpp.cxx": ("vaebench-no-such-compiler++",)}):
            model = small_model(1, "vamp")
            x = images(3)
            with pytest.warns(fused.CompileFallbackWarning, match="C\\+\\+ compiler") as caught:
                got = [log_weights(model, x, 10, seed=0, backend="compiled") for _ in range(2)]
            assert len([w for w in caught if issubclass(w.category, fused.CompileFallbackWarning)]) == 1
            want = log_weights(model, x, 10, seed=0, backend="torch")
            assert all(torch.equal(g, want) for g in got)  # the eager formula itself
    finally:
        cpp_builder.cpp_compiler_search.cache_clear()
    assert inductor_config.cpp.cxx == before  # later compiles in this session see the real setting


@torch.no_grad()
def test_a_compile_error_falls_back_once_per_model_structure(monkeypatch):
    calls = []

    def broken(*args):
        calls.append(args)
        raise RuntimeError("InductorError: simulated failure\nsecond line")

    monkeypatch.setattr(fused, "compile_problem", lambda device="cpu": None)
    monkeypatch.setattr(fused, "_compiled", lambda: broken)
    model = small_model(2, "mog")
    x = images(3)
    with pytest.warns(fused.CompileFallbackWarning, match="compiling HVAE failed .RuntimeError: InductorError"):
        got = [log_weights(model, x, 10, seed=0, index=torch.arange(3), backend="compiled") for _ in range(3)]
    assert len(calls) == 1  # not retried for every chunk
    want = log_weights(model, x, 10, seed=0, index=torch.arange(3), backend="torch")
    assert all(torch.equal(g, want) for g in got)


def test_unknown_backend_names_the_choices():
    assert BACKENDS == ("torch", "triton", "compiled")
    with pytest.raises(ValueError, match="'torch', 'triton', 'compiled'"):
        iwae_bounds(small_model(1, "standard"), images(2), (5,), seed=0, backend="inductor")


def test_mixture_table_matches_the_mixture_and_is_rebuilt_when_the_prior_changes():
    """The table (components padded to a multiple of 16 by weight-zero components) gives the mixture's
    log-density; it is kept with the prior object until one of its tensors changes in place."""
    gen = torch.Generator().manual_seed(0)
    loc = torch.randn(7, 3, generator=gen, requires_grad=True)
    prior = DiagonalGaussianMixture(loc, torch.rand(7, 3, generator=gen) + 0.5, torch.randn(7, generator=gen))
    z = torch.randn(11, 2, 3, generator=gen)
    table = fused.mixture_table(prior)
    assert table.weights.shape == (6, 16) and table.const.shape == (16,) and fused.mixture_table(prior) is table
    with torch.no_grad():
        torch.testing.assert_close(table.log_prob(z), prior.log_prob(z))
        loc.add_(0.5)  # an optimiser step on the same tensor
        assert fused.mixture_table(prior) is not table
        torch.testing.assert_close(fused.mixture_table(prior).log_prob(z), prior.log_prob(z))


def test_bias_pass_rewrites_cpu_addmm_as_mm_plus_add():
    from torch.fx.experimental.proxy_tensor import make_fx

    def layer(bias, a, w):
        return torch.sigmoid(torch.addmm(bias, a, w))

    args = (torch.randn(7), torch.randn(5, 3), torch.randn(3, 7))
    module = make_fx(layer, tracing_mode="fake")(*args)
    fused._unfuse_bias_addmm(module.graph)
    module.recompile()
    targets = {node.target for node in module.graph.nodes if node.op == "call_function"}
    assert torch.ops.aten.addmm.default not in targets
    assert {torch.ops.aten.mm.default, torch.ops.aten.add.Tensor} <= targets
    torch.testing.assert_close(module(*args), layer(*args))


def reference_noise(seed, index, start, stop, dim):
    """seeded_noise's CPU values as first implemented (block by block, then cat and stack): the committed
    records were drawn with these."""
    first, last = start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK
    columns = []
    for i in index.tolist():
        blocks = [
            torch.from_numpy(
                np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, i, block]))).standard_normal(
                    (NOISE_BLOCK, dim), dtype=np.float32
                )
            )
            for block in range(first, last + 1)
        ]
        columns.append(torch.cat(blocks)[start - first * NOISE_BLOCK : stop - first * NOISE_BLOCK])
    return torch.stack(columns, dim=1)


NOISE_CASES = [
    (0, [0, 1, 2], 0, 500, 4),
    (7, [5, 2, 99], 250, 1750, 40),  # starts and ends inside blocks
    (3, [1], 499, 501, 2),  # one sample either side of a block boundary
    (2**20, [10**9, 0], 1000, 1001, 80),
    (1, [3, 3, 4], 0, 5000, 40),  # a repeated example: the same column twice
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("seed, index, start, stop, dim", NOISE_CASES)
def test_seeded_noise_values_are_unchanged(seed, index, start, stop, dim, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # 1: drawn inline; 2: by the thread pool
    try:
        got = seeded_noise(seed, torch.tensor(index), start, stop, dim)
    finally:
        torch.set_num_threads(before)
    want = reference_noise(seed, torch.tensor(index), start, stop, dim)
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_seeded_noise_is_a_fraction_of_the_reference_time():
    """Timed in interleaved rounds (the machine is shared): the threaded fill is no slower than the original."""
    import time

    index, rounds = torch.arange(8), 5
    seconds = {"reference": [], "seeded_noise": []}
    for _ in range(rounds):
        for name, fn in (("reference", reference_noise), ("seeded_noise", seeded_noise)):
            start = time.perf_counter()
            fn(0, index, 0, 2 * NOISE_BLOCK, 40)
            seconds[name].append(time.perf_counter() - start)
    ratio = sorted(seconds["seeded_noise"])[rounds // 2] / sorted(seconds["reference"])[rounds // 2]
    assert ratio < 1.5, f"seeded_noise took {ratio:.2f}x the original"
