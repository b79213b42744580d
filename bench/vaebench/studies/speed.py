"""How fast L_5000 is computed, path by path, on the same binary test images: ``python -m vaebench.studies.speed``.

The model is the VampPrior paper's MNIST shape (gated dense 2x300, z = 40, 500 pseudo-inputs) with
random weights, in eval mode under ``torch.no_grad``. The comparisons are those of
``../shared/reference/performance-anchors.md``:

- ``ours-torch`` / ``ours-triton``: :func:`vaebench.core.estimators.iwae_bound` over batches of images
  (chunked over K, pseudo-inputs encoded once per call) with the torch or the fused Triton
  log-weights. Triton runs on CUDA only: on the CPU its interpreter is a test aid, not a speed path.
- ``ours-triton-tf32x3``: the same with the kernels' products on TF32 tensor cores, three per product
  (near-float32; its error on trained models is in ``results/precision.csv``).
- ``ours-compiled``: ``ours-torch`` with the log-weights compiled by inductor (``backend="compiled"``,
  :mod:`vaebench.core.fused`); its first call, which compiles, is reported apart (``first_call_seconds``,
  ``compile_seconds``). Skipped, with the reason, where it cannot compile.
- ``ours-compiled-unseeded``: the same computation (same chunks and sub-batches) with unseeded
  ``torch.randn`` noise instead of the per-image seeded streams: its ratio to ``ours-compiled`` is
  what the seeded noise costs (``ratio_to_unseeded``).
- ``seeded-noise``: the per-image seeded noise alone (:func:`vaebench.core.noise.seeded_noise`, the same
  k samples of the same images), to show its share of the evaluation time.
- ``products-only``: only the matrix products of ``ours-compiled``, at its shapes (:func:`products_only`):
  the part of the evaluation the roofline counts, timed; ``share_of_ours_compiled`` of it and of
  ``seeded-noise`` say where the time of the fused path goes.
- ``per-image-lean``: a careful per-image script (:func:`per_image_lean`).
- ``authors-pattern``: the VampPrior authors' ``calculate_likelihood`` pattern
  (:func:`authors_pattern`), timed on a few images only.
- ``pythae-pattern``: pythae's ``get_nll(batch_size=5000)``: the same per-image pattern with one
  chunk of all k samples (:func:`authors_pattern` with ``chunk=k``), on the same few images.
- ``roofline``: the time the decoder and mixture-prior FLOPs (:func:`flops_per_sample`) take at the
  GEMM rate measured in the same run (:func:`gemm_flops_per_s`).

Every row is per image, so paths timed on different numbers of images compare directly. CSV columns:
path, device, device_name, torch, threads (torch intra-op threads), images (timed), k, seconds (wall
time of the timed images: the median over ``--rounds`` interleaved rounds, see :func:`run`),
images_per_s, ms_per_image, flops_per_image (k * flops_per_sample: the
same useful work for every path, whatever a path repeats), achieved_gflops (flops_per_image *
images / seconds), fraction_of_gemm_peak (achieved / the measured GEMM rate), fraction_of_fp32_peak
(achieved / the looked-up non-tensor-core float32 peak in ``FP32_PEAK_TFLOPS``; CUDA only),
peak_memory_mb (see :class:`PeakMemory`), speedup_vs_per_image_lean, speedup_vs_authors and speedup_vs_pythae (their
ms_per_image / this one's), ratio_to_roofline (this ms_per_image / the roofline's),
max_abs_diff_vs_torch (ours-triton*, ours-compiled: the largest |L_K - L_K torch| over the images, same
seeded samples), first_call_seconds (the warm-up call on the first batch: compilation included),
compile_seconds (ours-compiled*: first_call_seconds less the steady-state time of the same images), ratio_to_unseeded
(ours-compiled: its ms_per_image / ours-compiled-unseeded's), share_of_ours_compiled (products-only,
seeded-noise: their ms_per_image / ours-compiled's), data, note. The ``seeded-noise`` row has
no FLOP columns (it does none of the counted work).
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import functools
import math
import os
import platform
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from vaebench.core.estimators import chunk_plan, iwae_bound, memory_budget
from vaebench.core.fused import CompileFallbackWarning, compile_problem
from vaebench.core.kernels import KernelOptions, interpreted, triton_problem
from vaebench.core.noise import seeded_noise
from vaebench.families.vae import VAE, ModelConfig
from vaebench.protocol.allocator import keep_freed_memory
from vaebench.protocol.datasets import DataError, load_dataset
from vaebench.protocol.files import atomic_path

VAMP_MNIST = ModelConfig(x_dim=784, z_dim=40, hidden=300, depth=2, net="gated", prior="vamp", n_components=500)
AUTHORS_CHUNK = 100
GEMM_SHAPE = (5000, 300, 784)
# Non-tensor-core float32 peaks (TFLOP/s) from the vendors' data sheets; first substring match wins.
FP32_PEAK_TFLOPS = {"H100 PCIe": 51.2, "H100": 66.9, "H200": 66.9, "A100": 19.5}
COLUMNS = [
    "path",
    "device",
    "device_name",
    "torch",
    "threads",
    "images",
    "k",
    "seconds",
    "images_per_s",
    "ms_per_image",
    "flops_per_image",
    "achieved_gflops",
    "fraction_of_gemm_peak",
    "fraction_of_fp32_peak",
    "peak_memory_mb",
    "speedup_vs_per_image_lean",
    "speedup_vs_authors",
    "speedup_vs_pythae",
    "ratio_to_roofline",
    "max_abs_diff_vs_torch",
    "first_call_seconds",
    "compile_seconds",
    "ratio_to_unseeded",
    "share_of_ours_compiled",
    "data",
    "note",
]


def linear_flops(module: nn.Module) -> int:
    """Matrix-multiply FLOPs of one row through every ``nn.Linear`` in ``module``: 2 * in * out each."""
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def flops_per_sample(model: VAE, k: int = 5000) -> float:
    """Matrix-multiply FLOPs of one importance sample of L_k for a one-level VAE.

    - decoder: 2 * in * out per linear layer (a gated layer has two, value and gate, plus the output
      layer); for the VampPrior MNIST shape 2*2*40*300 + 2*2*300*300 + 2*300*784 = 878,400;
    - mixture prior (MoG or VampPrior with C components): the [2d] x [2d, C] product of
      ``vaebench.core.mixture``: 2 * (2d) * C = 80,000 for d = 40, C = 500 (0 for the standard prior);
    - encoder: the image's one encoder pass, 2 * in * out per linear, shared by its k samples:
      (2*2*784*300 + 2*2*300*300 + 2*2*300*40) / k = 1,348,800 / 5000 = 269.76.
    Total for that shape at k = 5000: 958,669.76. Not counted: biases, the elementwise work (gates,
    softplus, the logsumexp over components and samples), sampling, log q(z|x), and encoding the
    pseudo-inputs (C encoder passes once per call, 0.67 GFLOP, negligible over a test set).
    """
    c = model.config
    components = c.n_components if c.prior in ("mog", "vamp", "vamp-data") else 0
    return linear_flops(model.decoder) + 2 * (2 * c.z_dim) * components + linear_flops(model.encoder) / k


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that wall-clock times include it; nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory growth of a block above its start, in MiB (``mb``; NaN where it cannot be read).

    CUDA: ``torch.cuda.max_memory_allocated`` during the block minus ``memory_allocated`` at its
    start (tensors only, not the allocator's cache). CPU: the peak resident set size of the process
    (``/proc/self/statm``, sampled every ``interval`` seconds by a thread) minus the RSS at the
    start, after ``malloc_trim`` has returned freed heap to the system; spikes shorter than the
    interval can be missed. Both leave out what already existed (model, data).
    """

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device, self.interval, self.mb = device, interval, math.nan
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = self._peak = 0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif Path("/proc/self/statm").is_file():
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except (OSError, AttributeError):
                pass
            self._start = self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.mb = (max(self._peak, _rss_bytes()) - self._start) / 2**20


def first_call(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, list[str]]:
    """(wall seconds of one call, the messages of the CompileFallbackWarnings it raised): the warm-up call,
    which for ``ours-compiled`` includes compiling."""
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompileFallbackWarning)
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds = time.perf_counter() - start
    fallbacks = [str(w.message) for w in caught if issubclass(w.category, CompileFallbackWarning)]
    for w in caught:
        if not issubclass(w.category, CompileFallbackWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for message in fallbacks:
        warnings.warn(message, CompileFallbackWarning, stacklevel=2)
    return seconds, fallbacks


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float, float]:
    """(fn(), wall seconds with CUDA work synchronised, peak memory growth in MiB) of one call."""
    synchronize(device)
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        seconds = time.perf_counter() - start
    return out, seconds, memory.mb


def gemm_flops_per_s(device: torch.device, shape: tuple[int, int, int] = GEMM_SHAPE, blocks: int = 7) -> float:
    """Measured float32 ``torch.mm`` rate in FLOP/s for [m, k] x [k, n] (default: the decoder's output
    layer over 5000 samples): 2mkn per product, the median over ``blocks`` timed blocks of ~0.1 s."""
    m, k, n = shape
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    out = torch.empty(m, n, device=device)

    def block(reps: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        synchronize(device)
        return time.perf_counter() - start

    reps = 1
    while block(reps) < 0.1:
        reps *= 2
    return 2 * m * k * n * reps / statistics.median(block(reps) for _ in range(blocks))


@torch.no_grad()
def ours(
    model: VAE,
    x: torch.Tensor,
    k: int,
    backend: str,
    batch_size: int,
    precision: str = "ieee",
    seeded: bool = True,
) -> torch.Tensor:
    """L_k per image [N] with ``iwae_bound`` over batches of ``batch_size`` images, seeded per image; the
    Triton kernels' products in ``precision`` (``KernelOptions(precision=...)``), with the committed tiles.

    ``seeded=False``: the same chunks and sub-batches (those the seeded call uses, see
    :func:`vaebench.core.estimators.chunk_plan`) with unseeded ``torch.randn`` noise."""
    options = KernelOptions(precision=precision)
    out = []
    desc = f"ours-{backend}" + ("" if seeded else "-unseeded")
    for start in tqdm(range(0, len(x), batch_size), desc=desc, unit="batch", leave=False):
        xb = x[start : start + batch_size]
        chunk = None
        if not seeded:
            chunk, _ = chunk_plan(len(xb), xb.shape[1], (k,), seeded=True, memory_bytes=memory_budget(x.device))
        out.append(
            iwae_bound(
                model,
                xb,
                k,
                chunk,
                seed=0 if seeded else None,
                index=torch.arange(start, start + len(xb)) if seeded else None,
                backend=backend,
                kernel_options=options,
            )
        )
    return torch.cat(out)


def noise_only(model: VAE, x: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """The seeded noise :func:`ours` draws for the same images (k samples of each image's stream, batch by
    batch), and nothing else; returns the per-image mean of the noise [N] (so the call returns a tensor)."""
    out = []
    for start in range(0, len(x), batch_size):
        index = torch.arange(start, min(start + batch_size, len(x)))
        out.append(seeded_noise(0, index, 0, k, model.config.z_dim, x.device).mean((0, 2)))
    return torch.cat(out)


@torch.no_grad()
def products_only(model: VAE, x: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """The matrix products of :func:`ours` and nothing else, at its shapes: per batch of ``batch_size`` images, its
    sub-batches and chunks (:func:`vaebench.core.estimators.chunk_plan`), every decoder ``nn.Linear`` and the output
    layer on a contiguous [chunk * sub-batch, in] operand (bias and nonlinearity left out), the mixture prior's
    [chunk * sub-batch, 2d] x [2d, C] product, and the encoder once per image. Operands are filled once per batch,
    outside its chunk loop. Returns the per-image sum of the last product's first column [N]."""
    c = model.config
    components = c.n_components if c.prior in ("mog", "vamp", "vamp-data") else 0
    layers = [m.weight.t() for m in model.decoder.modules() if isinstance(m, nn.Linear)]
    if components:
        layers.append(torch.randn(2 * c.z_dim, components, device=x.device))
    encoder = [m.weight.t() for m in model.encoder.modules() if isinstance(m, nn.Linear)]
    budget = memory_budget(x.device)
    out = []
    for start in range(0, len(x), batch_size):
        batch = min(batch_size, len(x) - start)
        chunk, per_batch = chunk_plan(batch, x.shape[1], (k,), seeded=True, memory_bytes=budget)
        operands = {w.shape[0]: torch.rand(chunk * min(per_batch, batch), w.shape[0], device=x.device) for w in layers}
        for w in encoder:
            torch.mm(torch.rand(batch, w.shape[0], device=x.device), w)
        for sub in range(0, batch, per_batch):
            b = min(per_batch, batch - sub)
            for lo in range(0, k, chunk):
                rows = min(chunk, k - lo) * b
                for w in layers:
                    last = torch.mm(operands[w.shape[0]][:rows], w)
            out.append(last[:b, 0])
    return torch.cat(out)


@torch.no_grad()
def per_image_lean(model: VAE, x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """L_k per image [N] the way a careful script does it: the prior (pseudo-inputs) built once per
    call; per image one encoder pass, all k samples decoded at once, the mixture density by matrix
    products (``vaebench.core.mixture``), log p(x|z) from the logits with softplus."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    prior = model.prior()
    out = torch.empty(len(x), device=x.device)
    for i in tqdm(range(len(x)), desc="per-image-lean", unit="image", leave=False):
        xi = x[i : i + 1]
        loc, scale = model.encoder(xi)
        eps = torch.randn(k, loc.shape[1], generator=gen, device=x.device)
        z = loc + scale * eps
        logits = model.likelihood_head(model.likelihood_features(z))
        log_px = (xi * logits - F.softplus(logits)).sum(1)
        log_qz = (-0.5 * eps.pow(2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum(1)
        out[i] = torch.logsumexp(log_px + prior.log_prob(z) - log_qz, 0) - math.log(k)
    return out


def _log_normal_diag(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """The authors' elementwise log-density without the -log(2 pi) / 2, which cancels in log p(z) - log q(z|x)."""
    return -0.5 * (logvar + (z - mean).pow(2) / logvar.exp())


@torch.no_grad()
def authors_pattern(model: VAE, x: torch.Tensor, k: int, chunk: int = AUTHORS_CHUNK, seed: int = 0) -> torch.Tensor:
    """L_k per image [N] in the VampPrior authors' ``calculate_likelihood`` pattern: per image, k / chunk
    chunks; each chunk encodes ``chunk`` copies of the image and all pseudo-inputs again, decodes to
    clamped Bernoulli means, and takes the mixture density from a broadcast [chunk, C, d] tensor."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    out = torch.empty(len(x), device=x.device)
    for i in tqdm(range(len(x)), desc="authors-pattern", unit="image", leave=False):
        xs = x[i : i + 1].expand(chunk, -1)
        parts = []
        for _ in range(k // chunk):
            loc, scale = model.encoder(xs)
            logvar = 2 * scale.log()
            z = loc + scale * torch.randn(loc.shape, generator=gen, device=x.device)
            probs = torch.sigmoid(model.likelihood_head(model.likelihood_features(z))).clamp(1e-5, 1 - 1e-5)
            log_px = (xs * probs.log() + (1 - xs) * (1 - probs).log()).sum(1)
            p_loc, p_scale = model.encoder(model.prior_net.pseudo_inputs)
            table = _log_normal_diag(z[:, None, :], p_loc[None], 2 * p_scale.log()[None]).sum(2)
            table = table - math.log(p_loc.shape[0])
            top = table.max(1).values
            log_pz = top + (table - top[:, None]).exp().sum(1).log()
            parts.append(log_px + log_pz - _log_normal_diag(z, loc, logvar).sum(1))
        out[i] = torch.logsumexp(torch.cat(parts), 0) - math.log(k)
    return out


def device_name(device: torch.device) -> str:
    """The GPU's name, else the CPU model from /proc/cpuinfo (else ``platform.processor()``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fp32_peak(name: str) -> float | None:
    """Looked-up float32 (non-tensor-core) peak in FLOP/s for a known GPU name, else None."""
    for key, tflops in FP32_PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def load_images(n: int, device: torch.device) -> tuple[torch.Tensor, str]:
    """The first n static binarized MNIST test images, or random binary images when the dataset cannot be
    loaded (files missing and no download possible)."""
    try:
        test = load_dataset("binarized-mnist").test
    except DataError as err:
        print(f"binarized-mnist unavailable ({str(err).splitlines()[0][:120]}...): using random binary images")
        x = torch.bernoulli(torch.full((n, VAMP_MNIST.x_dim), 0.5), generator=torch.Generator().manual_seed(0))
        return x.to(device), "random binary images"
    if n > len(test):
        raise SystemExit(f"--images {n}: the test set has {len(test)} images")
    return test[:n].clone().to(device), f"binarized-mnist test[:{n}]"


def _format(value: object) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def write_csv(rows: list[dict], path: Path) -> None:
    """Write the rows to ``path`` atomically (``vaebench.protocol.files.atomic_path``: a temporary file, then a rename),
    keeping the rows of other devices already there: one file holds the latest run of each device
    (``device`` type and ``device_name``, so an H100 run leaves an H200's rows)."""
    devices = {(r["device"], r.get("device_name", "")) for r in rows}
    kept = []
    if path.is_file():
        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if (r.get("device"), r.get("device_name", "")) not in devices]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
        writer.writerows({c: _format(row.get(c)) for c in COLUMNS} for row in rows)


def run(device: torch.device, images: int, k: int, authors_images: int, batch_size: int, rounds: int = 3) -> list[dict]:
    """Time every path on the same images; returns the rows (see the module docstring).

    After one warm-up call per path, ``rounds`` rounds each measure the GEMM rate and then time every
    path once, in turn; a row holds the median seconds over rounds (peak memory: the largest) and the
    roofline uses the median GEMM rate. Interleaving makes a slow spell on a shared machine slow
    every path alike instead of biasing the one timed during it.
    """
    torch.manual_seed(0)
    model = VAE(VAMP_MNIST).to(device).eval()
    x, data = load_images(max(images, authors_images), device)
    flops_image = flops_per_sample(model, k) * k
    name = device_name(device)
    peak = fp32_peak(name) if device.type == "cuda" else None
    common = {
        "device": device.type,
        "device_name": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "k": k,
        "flops_per_image": flops_image,
        "data": data,
    }
    batch_size = min(batch_size, images)
    skip_triton = None
    if device.type != "cuda" or interpreted():
        skip_triton = (
            "skipped: only compiled kernels on CUDA are a speed path (unset TRITON_INTERPRET, use --device cuda)"
        )
    elif (problem := triton_problem(device)) is not None:
        skip_triton = f"skipped: {problem}"
    skip_compiled = f"skipped: {problem}" if (problem := compile_problem(device)) is not None else None
    paths: dict[str, tuple[int, Callable[[int], torch.Tensor], str | None]] = {
        "ours-torch": (images, lambda n: ours(model, x[:n], k, "torch", batch_size), None),
        "ours-compiled": (images, lambda n: ours(model, x[:n], k, "compiled", batch_size), skip_compiled),
        "ours-compiled-unseeded": (
            images,
            lambda n: ours(model, x[:n], k, "compiled", batch_size, seeded=False),
            skip_compiled,
        ),
        "ours-triton": (images, lambda n: ours(model, x[:n], k, "triton", batch_size), skip_triton),
        "ours-triton-tf32x3": (images, lambda n: ours(model, x[:n], k, "triton", batch_size, "tf32x3"), skip_triton),
        "products-only": (images, lambda n: products_only(model, x[:n], k, batch_size), None),
        "per-image-lean": (images, lambda n: per_image_lean(model, x[:n], k), None),
        "authors-pattern": (authors_images, lambda n: authors_pattern(model, x[:n], k), None),
        "pythae-pattern": (authors_images, lambda n: authors_pattern(model, x[:n], k, chunk=k), None),
        "seeded-noise": (images, lambda n: noise_only(model, x[:n], k, batch_size), None),
    }
    timed_paths = {path: spec for path, spec in paths.items() if spec[2] is None}
    warm_images, first_seconds, fallbacks = {}, {}, {}
    for path, (n, fn, _) in timed_paths.items():  # warm-up: the first batch's shapes, compilation
        warm_images[path] = min(n, batch_size) if path.startswith("ours") else 1
        first_seconds[path], fallbacks[path] = first_call(functools.partial(fn, warm_images[path]), device)
    if any(fallbacks.get(p) for p in ("ours-compiled", "ours-compiled-unseeded")):  # said once, for both
        fallbacks["ours-compiled"] = fallbacks["ours-compiled-unseeded"] = sorted(
            {*fallbacks["ours-compiled"], *fallbacks["ours-compiled-unseeded"]}
        )
    gemm_rates, seconds, memory, bounds = [], {p: [] for p in timed_paths}, {p: [] for p in timed_paths}, {}
    for _ in tqdm(range(rounds), desc="rounds", unit="round", leave=False):
        gemm_rates.append(gemm_flops_per_s(device))
        for path, (n, fn, _) in timed_paths.items():
            out, s, m = timed(functools.partial(fn, n), device)
            bounds[path] = out
            seconds[path].append(s)
            memory[path].append(m)
    gemm = statistics.median(gemm_rates)

    def row(path: str, n: int | None, secs: float | None = None, mem: float | None = None, **extra: object) -> dict:
        out = {"path": path, "images": n, **common, **extra}
        if secs is not None:
            achieved = flops_image * n / secs
            out.update(
                seconds=secs,
                images_per_s=n / secs,
                ms_per_image=1e3 * secs / n,
                achieved_gflops=achieved / 1e9,
                fraction_of_gemm_peak=achieved / gemm,
                fraction_of_fp32_peak=achieved / peak if peak else None,
                peak_memory_mb=mem,
            )
        if path == "seeded-noise":  # none of the counted FLOPs
            out.update(
                flops_per_image=None, achieved_gflops=None, fraction_of_gemm_peak=None, fraction_of_fp32_peak=None
            )
        if path in first_seconds and secs is not None:
            out["first_call_seconds"] = first_seconds[path]
            if path.startswith("ours-compiled"):
                out["compile_seconds"] = max(0.0, first_seconds[path] - secs / n * warm_images[path])
        return out

    notes = {
        "ours-compiled-unseeded": "ours-compiled's chunks with unseeded torch.randn noise",
        "products-only": "the matrix products of ours-compiled at its shapes, nothing else",
        "seeded-noise": f"seeded_noise alone: {k} samples of each image's stream (numpy Philox, threaded)",
        "authors-pattern": f"{k // AUTHORS_CHUNK} chunks of {AUTHORS_CHUNK} samples per image",
        "pythae-pattern": f"pythae get_nll(batch_size={k}): one chunk of {k} rows per image through the whole "
        "model, the image encoded k times, pseudo-inputs re-encoded, [k, C, d] broadcast",
    }
    rows = []
    for path, (n, _, skipped) in paths.items():
        if skipped:
            rows.append(row(path, None, note=skipped))
            continue
        extra = {"note": notes[path]} if path in notes else {}
        if fallbacks.get(path):
            extra["note"] = "; ".join([*([extra["note"]] if "note" in extra else []), *fallbacks[path]])
        if path.startswith("ours-triton") or path == "ours-compiled":
            extra["max_abs_diff_vs_torch"] = float((bounds[path].double() - bounds["ours-torch"].double()).abs().max())
        rows.append(row(path, n, statistics.median(seconds[path]), max(memory[path]), **extra))
    m, kk, n = GEMM_SHAPE
    rows.append(
        row(
            "roofline",
            images,
            flops_image * images / gemm,
            note=f"decoder + mixture FLOPs at the measured torch.mm {m}x{kk} by {kk}x{n} float32 rate "
            f"(median of {rounds} rounds)",
        )
    )

    reference = {r["path"]: r.get("ms_per_image") for r in rows}
    for r in rows:
        if r.get("ms_per_image"):
            r["speedup_vs_per_image_lean"] = reference["per-image-lean"] / r["ms_per_image"]
            r["speedup_vs_authors"] = reference["authors-pattern"] / r["ms_per_image"]
            r["speedup_vs_pythae"] = reference["pythae-pattern"] / r["ms_per_image"]
            r["ratio_to_roofline"] = r["ms_per_image"] / reference["roofline"]
        if r["path"] == "ours-compiled" and r.get("ms_per_image") and reference.get("ours-compiled-unseeded"):
            r["ratio_to_unseeded"] = r["ms_per_image"] / reference["ours-compiled-unseeded"]
        if r["path"] in ("products-only", "seeded-noise") and r.get("ms_per_image") and reference.get("ours-compiled"):
            r["share_of_ours_compiled"] = r["ms_per_image"] / reference["ours-compiled"]
    return rows


def summary(rows: list[dict]) -> list[str]:
    """Lines on the fastest timed ours-* path: its ratio to the roofline, its speed-ups, what its first call
    (compilation) cost, and what the seeded noise costs."""
    by_path = {r["path"]: r for r in rows if r.get("ms_per_image")}
    ours = [r for p, r in by_path.items() if p.startswith("ours") and not p.endswith("unseeded")]
    if not ours:
        return []
    best = min(ours, key=lambda r: r["ms_per_image"])
    lines = [
        f"{best['path']}: {best['ms_per_image']:.3g} ms per image, {best['ratio_to_roofline']:.2f}x the roofline, "
        f"{best['speedup_vs_per_image_lean']:.2f}x faster than the lean per-image loop, "
        f"{best['speedup_vs_authors']:.1f}x than the authors' pattern, {best['speedup_vs_pythae']:.1f}x than pythae's"
    ]
    for path in ("ours-compiled",):
        if (r := by_path.get(path)) and r.get("compile_seconds") is not None:
            lines.append(
                f"{path}: first call (one batch) {r['first_call_seconds']:.3g} s, of which about "
                f"{r['compile_seconds']:.3g} s compiling; then {r['ms_per_image']:.3g} ms per image"
            )
    if (r := by_path.get("ours-compiled")) and r.get("ratio_to_unseeded"):
        lines.append(f"seeded noise vs unseeded torch.randn: {r['ratio_to_unseeded']:.3f}x the time")
    if (noise := by_path.get("seeded-noise")) is not None:
        shares = ", ".join(
            f"{100 * noise['ms_per_image'] / by_path[p]['ms_per_image']:.1f}% of {p}"
            for p in ("ours-torch", "ours-compiled")
            if p in by_path
        )
        lines.append(f"seeded noise alone: {noise['ms_per_image']:.3g} ms per image ({shares})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=20, help="images timed for ours-* and per-image-lean")
    parser.add_argument(
        "--authors-images", type=int, default=3, help="images timed for the authors' and pythae's patterns"
    )
    parser.add_argument("--k", type=int, default=5000, help="importance samples; a multiple of 100")
    parser.add_argument("--batch-size", type=int, default=100, help="images per iwae_bound call (ours-*)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved timing rounds; each path's row is the median over rounds"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/kernel_bench.csv"),
        help="CSV to write; rows of other devices already in it are kept",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu")
    if args.k < AUTHORS_CHUNK or args.k % AUTHORS_CHUNK:
        parser.error(f"--k {args.k}: use a positive multiple of {AUTHORS_CHUNK} (the authors' chunk size)")
    if min(args.images, args.authors_images, args.batch_size, args.rounds) < 1:
        parser.error("--images, --authors-images, --batch-size and --rounds must be at least 1")
    keep_freed_memory()  # as run_bench.py does; every path is timed under the same allocator settings
    rows = run(torch.device(args.device), args.images, args.k, args.authors_images, args.batch_size, args.rounds)
    write_csv(rows, args.out)
    table = pd.DataFrame(rows, columns=COLUMNS).drop(columns=["device", "device_name", "torch", "k", "data", "note"])
    table["images"] = table["images"].astype("Int64")
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.precision", 3):
        print(table.to_string(index=False))
    first = rows[0]
    print(f"{first['device_name']} ({first['device']}), torch {first['torch']}, k = {first['k']}, {first['data']}")
    for r in rows:
        if r.get("note"):
            print(f"  {r['path']}: {r['note']}")
    for line in summary(rows):
        print(line)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
