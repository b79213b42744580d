"""Timings of the K = 5000 evaluation with pytest-benchmark; each test also checks what it timed.

Timed: the log-weight step (``log_weights``, one chunk of samples), ``iwae_bound`` at k = 5000, and
the whole protocol (``vaebench.protocol.evaluate.evaluate``, ELBO surgery included) on a few images. The model
is the VampPrior paper's MNIST shape (gated dense 2x300, z = 40, 500 pseudo-inputs) with random
weights, in eval mode under ``torch.no_grad``; the data are random binary images, so no dataset
files are needed. ``extra_info`` records the device, k, the number of images and the
matrix-multiply FLOPs (``vaebench.studies.speed.flops_per_sample``).

Backends: ``torch``, ``compiled`` (the log-weights compiled by inductor; its first call compiles, so a
timed run's warm-up round takes that, and an untimed run's single call includes it) and ``triton``.

Rounds: with ``--benchmark-only`` or ``--benchmark-enable`` (``tox -e benchmark``) every function
runs ``ROUNDS`` timed rounds after one warm-up round. In any other run, such as the plain
``pytest tests`` of CI where pytest-benchmark is installed and enabled, each runs once, a few
seconds on 2 CPU cores. The Triton cases need CUDA and a compiled Triton: under the CPU interpreter
(``TRITON_INTERPRET=1``) the kernels are tested for correctness in ``tests/core/test_kernels.py``, not timed.
"""

import math
import warnings

import pytest
import torch

from vaebench.core.estimators import iwae_bound, log_weights
from vaebench.core.fused import CompileFallbackWarning, compile_problem
from vaebench.core.kernels import interpreted, triton_problem
from vaebench.families.vae import VAE
from vaebench.protocol.datasets import Dataset
from vaebench.protocol.evaluate import evaluate
from vaebench.protocol.settings import Settings
from vaebench.studies.speed import VAMP_MNIST, flops_per_sample

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ROUNDS = 5
N_IMAGES = 20  # iwae_bound and log_weights
N_CHECKED = 4  # images whose bound is recomputed from their log-weights
CHUNK_K = 1000  # log_weights: about the chunk iwae_bound takes for 20 images
K = 5000
N_PROTOCOL = 10  # test images of the protocol run
N_TRAIN = 500  # training images of its ELBO surgery

BACKENDS = ["torch", "compiled", pytest.param("triton", marks=pytest.mark.cuda)]


def require(backend: str) -> None:
    """Skip a Triton case unless the kernels would run compiled on CUDA, a compiled case where inductor cannot
    compile (it would time the eager fallback). Checked when the test runs: tests/conftest.py sets
    TRITON_INTERPRET=1 when there is no CUDA device."""
    if backend == "torch":
        return
    if backend == "compiled":
        if (problem := compile_problem(DEVICE)) is not None:
            pytest.skip(f"backend='compiled' cannot compile here: {problem}")
        return
    if DEVICE.type != "cuda" or interpreted():
        pytest.skip("the fused Triton kernels are timed compiled on CUDA only (the interpreter is not a speed path)")
    if (problem := triton_problem(DEVICE)) is not None:
        pytest.skip(problem)


def agree(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Within float32 accumulation error of each other: 0.01 nats plus 1e-5 relative."""
    return bool(((got.double() - want.double()).abs() <= 1e-2 + 1e-5 * want.double().abs()).all())


def timed(benchmark, request, fn):
    """fn() under ``benchmark.pedantic``: ROUNDS rounds after a warm-up when timing, else once. A compile
    fallback (which would time the eager formula under the compiled name) fails the test."""
    timing = request.config.getoption("benchmark_only") or request.config.getoption("benchmark_enable")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        return benchmark.pedantic(fn, rounds=ROUNDS if timing else 1, warmup_rounds=1 if timing else 0)


def describe(benchmark, model: VAE, k: int, n_images: int, backend: str) -> None:
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu",
        threads=torch.get_num_threads(),
        backend=backend,
        k=k,
        n_images=n_images,
        flops=flops_per_sample(model, k) * k * n_images,
    )


@pytest.fixture(scope="module")
def model() -> VAE:
    torch.manual_seed(0)
    return VAE(VAMP_MNIST).to(DEVICE).eval()


def binary_images(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, VAMP_MNIST.x_dim), 0.5), generator=gen)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return binary_images(N_IMAGES, seed=1).to(DEVICE)


@pytest.mark.benchmark(group="log-weights")
@pytest.mark.parametrize("backend", BACKENDS)
def test_log_weights(benchmark, request, model, images, backend):
    require(backend)
    describe(benchmark, model, CHUNK_K, len(images), backend)

    def step():
        with torch.no_grad():
            return log_weights(model, images, CHUNK_K, seed=0, backend=backend)

    lw = timed(benchmark, request, step)
    assert lw.shape == (CHUNK_K, len(images)) and torch.isfinite(lw).all()
    if backend != "torch":
        with torch.no_grad():
            assert agree(lw, log_weights(model, images, CHUNK_K, seed=0, backend="torch"))


@pytest.mark.benchmark(group="iwae-bound-k5000")
@pytest.mark.parametrize("backend", BACKENDS)
def test_iwae_bound_k5000(benchmark, request, model, images, backend):
    require(backend)
    describe(benchmark, model, K, len(images), backend)
    index = torch.arange(len(images))
    bound = timed(benchmark, request, lambda: iwae_bound(model, images, K, seed=0, index=index, backend=backend))
    assert bound.shape == (len(images),) and torch.isfinite(bound).all()
    # The same seeded samples of the first N_CHECKED images, in other chunks (the noise is per image):
    # L_K = log mean w, and mean log w <= L_K <= max log w.
    few, bound = images[:N_CHECKED], bound[:N_CHECKED]
    with torch.no_grad():
        lw = torch.cat(
            [log_weights(model, few, CHUNK_K, seed=0, index=index[:N_CHECKED], start=s) for s in range(0, K, CHUNK_K)]
        ).double()
    assert agree(bound, torch.logsumexp(lw, 0) - math.log(K))
    assert (lw.mean(0) <= bound + 1e-3).all() and (bound <= lw.max(0).values + 1e-3).all()


@pytest.mark.slow  # about 20 s on 2 CPU cores: K = 5000 on 10 images and the ELBO surgery over 500
@pytest.mark.benchmark(group="protocol")
def test_protocol_evaluate(benchmark, request, model):
    describe(benchmark, model, K, N_PROTOCOL, "torch")
    dataset = Dataset(
        "random-binary",
        train=binary_images(N_TRAIN, seed=2),
        valid=binary_images(N_PROTOCOL, seed=3),
        test=binary_images(N_PROTOCOL, seed=4),
    )
    settings = Settings(k=K, n_test=N_PROTOCOL, seed=0, batch_size=N_PROTOCOL)
    record, per_example = timed(benchmark, request, lambda: evaluate(model, dataset, settings, device=DEVICE))
    surgery = record.surgery
    assert surgery is not None, record.surgery_note
    ladder = [record.bounds[m] for m in (1, 5, 50, 500, 5000)]
    assert all(map(math.isfinite, ladder + [record.elbo, surgery.mutual_info, surgery.marginal_kl]))
    # groups of m are nested in groups of M (consecutive samples, m divides M): by Jensen L_m <= L_M for every draw
    assert ladder == sorted(ladder), f"L_k must grow with k: {ladder}"
    assert record.log_likelihood == ladder[-1] and record.n_test == N_PROTOCOL
    assert per_example[f"L_{K}"].shape == (N_PROTOCOL,)
    assert math.isclose(float(per_example[f"L_{K}"].double().mean()), record.log_likelihood, rel_tol=1e-12)
    assert surgery.mutual_info <= surgery.log_n + 1e-9  # each term log q(z|x_i) - log q(z) <= log N
