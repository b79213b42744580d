"""Fused log-weight kernels: log p(x|z) and a mixture log p(z) without their big intermediate tables.

Bernoulli decoder, logits l = h W^T + c (h [K, B, H] decoder features, W [D, H], c [D]):

    log p(x_b | z_kb) = sum_j x_bj l_kbj - softplus(l_kbj),   softplus(l) = max(l, 0) + log1p(exp(-|l|)).

The Triton kernel computes each [rows, D] block of logits with ``tl.dot`` over H, applies the
epilogue and reduces over D on chip: the [K, B, D] logits never exist in memory.

Mixture prior (see ``vaebench.core.mixture``): log N(z; m_c, s_c^2) = [z^2, z] . [-p_c / 2, m_c p_c] + const_c
with p_c = 1 / s_c^2, so the kernel runs that product tile by tile over the C components and keeps a
running max and running sum per row (online logsumexp): the [S, C] table never exists either.

Both kernels compute in float32 with full-precision products by default (``input_precision="ieee"``,
Triton 3.0 or later; ``options=KernelOptions(precision="tf32x3")`` or ``"tf32"`` selects tensor-core
products, whose error on trained models ``vaebench.studies.precision`` measures), return float32
(float64 for float64 inputs) and carry no autograd graph. How they run (precision, tiles) is an explicit,
frozen :class:`KernelOptions` argument: there is no module state to switch.

Speed: on an H200 the plain torch path (cuBLAS products, then the elementwise terms) is about 1.6 times
as fast end to end (``results/kernel_bench.csv``): the kernels' float32 ``tl.dot`` runs on FMA units at about
16 TFLOP/s against cuBLAS's 41, more than the memory traffic they save. They are therefore the option
that never materialises the big tables, not the protocol's default. Without CUDA they run under the
Triton interpreter, which needs ``TRITON_INTERPRET=1`` in the environment before ``triton`` is
first imported (Triton reads it when it defines its own library functions). This module imports
``triton`` only on the first call that needs it, so importing ``vaebench.core.kernels`` early is harmless.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from vaebench.core import mixture

triton = tl = None  # the modules, set by _load_triton; the kernel bodies below read ``tl`` when they run

KERNELS = ("bernoulli", "mixture")
DOT_PRECISIONS = ("ieee", "tf32x3", "tf32")
BACKENDS = ("torch", "triton")
_jitted: dict[str, object] = {}


def interpreted() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels run in its interpreter (on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _load_triton() -> bool:
    """Import triton once and jit the kernels; False when it is not installed."""
    global triton, tl
    if triton is None:
        try:
            triton, tl = importlib.import_module("triton"), importlib.import_module("triton.language")
        except ImportError:
            return False
        _jitted.update((fn.__name__, triton.jit(fn)) for fn in (_bernoulli_kernel, _mixture_kernel, _normal_kernel))
    return True


def _unavailable_reason() -> str | None:
    """Why Triton cannot run here at all, with the fix; None when it can."""
    if not (torch.cuda.is_available() or interpreted()):
        return (
            "there is no CUDA device: run on a GPU, or set TRITON_INTERPRET=1 before Python starts to "
            "interpret the kernels on the CPU (slow; for testing)"
        )
    if not _load_triton():
        return "triton is not installed: install it (PyTorch's Linux CUDA wheels include it)"
    # Triton picks interpreted or compiled functions when it jits them: its own library at import,
    # these kernels in _load_triton. Both must match the flag now.
    modes = {interpreted(), *(type(f).__name__ == "InterpretedFunction" for f in (tl.zeros, *_jitted.values()))}
    if len(modes) > 1:
        return (
            "TRITON_INTERPRET changed after triton was imported, and Triton reads it at import: set it in the "
            "environment before Python starts (tests/conftest.py does)"
        )
    return None


def triton_problem(device: torch.device | str | None = None) -> str | None:
    """Why the kernels cannot run here on tensors on ``device`` (device unchecked when None), with the fix;
    None when they can. The one check behind every backend choice.

    Compiled, they take CUDA tensors; under ``TRITON_INTERPRET=1`` the interpreter takes CPU tensors.
    Imports ``triton`` only when one of the two can hold.
    """
    reason = _unavailable_reason()
    if reason is None and device is not None and torch.device(device).type != "cuda" and not interpreted():
        reason = (
            f"compiled Triton kernels take CUDA tensors, not {torch.device(device).type} ones: "
            "put them on the GPU (--device cuda)"
        )
    return reason


@dataclass(frozen=True)
class Tiles:
    """Launch settings of one kernel: ``block_m`` rows per program, ``block_n`` output columns (Bernoulli
    pixels, mixture components) and ``block_k`` reduced columns (hidden units, latent coordinates) per
    ``tl.dot``: powers of two of at least 16; ``num_warps``, ``num_stages``: None for Triton's defaults."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int | None = None
    num_stages: int | None = None

    def __post_init__(self) -> None:
        blocks = (self.block_m, self.block_n, self.block_k)
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks) or any(
            b < 16 or b & (b - 1) for b in blocks
        ):
            raise ValueError(f"tile sizes {list(blocks)}: use powers of two of at least 16 (tl.dot)")
        for name in ("num_warps", "num_stages"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name}={value!r}: use a positive integer, or None for Triton's default")

    def launch(self) -> dict[str, int]:
        """The kernel's launch keywords: BLOCK_M, BLOCK_N, BLOCK_K and the set ones of num_warps, num_stages."""
        out = {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k}
        return out | {key: getattr(self, key) for key in ("num_warps", "num_stages") if getattr(self, key) is not None}


# The committed tiles (``python -m vaebench.studies.tiles`` sweeps them). Bernoulli: the fastest of 48 float32
# (ieee) configurations timed on an H200 for the MNIST decoder head (H = 300, D = 784), 1.6x the first
# choice (64, 64, 32, 4 warps). Mixture: block sizes chosen by hand, Triton's default warps and stages;
# not yet swept on a GPU.
BERNOULLI_TILES = Tiles(block_m=128, block_n=64, block_k=16, num_warps=4, num_stages=3)
MIXTURE_TILES = Tiles(block_m=64, block_n=64, block_k=32, num_warps=4, num_stages=3)


@dataclass(frozen=True)
class KernelOptions:
    """How the fused kernels run: ``precision`` of their products (``ieee``: float32 FMA; ``tf32x3``: three
    TF32 tensor-core products, near float32; ``tf32``: one, 10-bit mantissa) and each kernel's
    :class:`Tiles`. The defaults are the committed settings; the torch backend ignores them."""

    precision: str = "ieee"
    bernoulli: Tiles = BERNOULLI_TILES
    mixture: Tiles = MIXTURE_TILES

    def __post_init__(self) -> None:
        if self.precision not in DOT_PRECISIONS:
            raise ValueError(f"unknown dot precision {self.precision!r}: use one of {', '.join(DOT_PRECISIONS)}")
        for kernel in KERNELS:
            if not isinstance(getattr(self, kernel), Tiles):
                raise TypeError(f"{kernel}={getattr(self, kernel)!r}: give a vaebench.core.kernels.Tiles")

    def tiles(self, kernel: str) -> Tiles:
        """The tiles of ``kernel`` (``bernoulli`` or ``mixture``)."""
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}: use one of {', '.join(KERNELS)}")
        return getattr(self, kernel)

    def with_tiles(self, kernel: str, tiles: Tiles) -> KernelOptions:
        """A copy whose ``kernel`` launches with ``tiles``."""
        self.tiles(kernel)
        return dataclasses.replace(self, **{kernel: tiles})


DEFAULT_OPTIONS = KernelOptions()


def _options(options: KernelOptions | None) -> KernelOptions:
    if options is None:
        return DEFAULT_OPTIONS
    if not isinstance(options, KernelOptions):
        raise TypeError(f"options={options!r}: give a vaebench.core.kernels.KernelOptions (or None for the defaults)")
    return options


def _check_backend(backend: str, *tensors: torch.Tensor) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use 'torch' or 'triton'")
    if backend == "torch":
        return
    for device in {t.device for t in tensors} or {None}:
        problem = triton_problem(device)
        if problem is not None:
            raise RuntimeError(f"the triton backend cannot run here: {problem}; or use backend='torch'")


def _bernoulli_kernel(
    h_ptr,
    w_ptr,
    bias_ptr,
    x_ptr,
    out_ptr,
    M,
    B,
    D,
    H,
    stride_hm,
    stride_hh,
    stride_wd,
    stride_wh,
    stride_xb,
    stride_xd,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """out[m] = sum_j x[m % B, j] l[m, j] - softplus(l[m, j]),  l = h W^T + bias; one program per BLOCK_M rows."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_hm
    x_rows = x_ptr + (rows % B).to(tl.int64)[:, None] * stride_xb
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, D, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < D
        logits = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < H
            h = tl.load(h_rows + ks[None, :] * stride_hh, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(
                w_ptr + ks[:, None] * stride_wh + cols[None, :] * stride_wd,
                mask=k_ok[:, None] & col_ok[None, :],
                other=0.0,
            )
            logits = tl.dot(h, w, logits, input_precision=PRECISION)
        logits += tl.load(bias_ptr + cols, mask=col_ok, other=0.0)[None, :]
        x = tl.load(x_rows + cols[None, :] * stride_xd, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        u = tl.exp(-tl.abs(logits))
        v = 1.0 + u
        # log1p(u) to full precision: log(1 + u) * u / ((1 + u) - 1), or u itself when 1 + u rounds to 1
        # (v - 1 is then 0, otherwise at least 2^-24, so the clamp only keeps the unused branch finite).
        log1p_u = tl.where(v == 1.0, u, tl.log(v) * (u / tl.maximum(v - 1.0, 1e-30)))
        term = x * logits - (tl.maximum(logits, 0.0) + log1p_u)
        total += tl.sum(tl.where(col_ok[None, :], term, 0.0), axis=1)
    tl.store(out_ptr + rows, total, mask=row_ok)


def _mixture_kernel(
    z_ptr,
    a_ptr,
    b_ptr,
    const_ptr,
    out_ptr,
    S,
    C,
    d,
    stride_zs,
    stride_zd,
    stride_ad,
    stride_ac,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """out[s] = logsumexp_c (z_s^2 . A[:, c] + z_s . Bm[:, c] + const[c]), online over C tiles."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < S
    z_rows = z_ptr + rows.to(tl.int64)[:, None] * stride_zs
    run_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, C, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < C
        logp = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, d, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < d
            z = tl.load(z_rows + ks[None, :] * stride_zd, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w_offsets = ks[:, None] * stride_ad + cols[None, :] * stride_ac
            w_mask = k_ok[:, None] & col_ok[None, :]
            logp = tl.dot(z * z, tl.load(a_ptr + w_offsets, mask=w_mask, other=0.0), logp, input_precision=PRECISION)
            logp = tl.dot(z, tl.load(b_ptr + w_offsets, mask=w_mask, other=0.0), logp, input_precision=PRECISION)
        logp += tl.load(const_ptr + cols, mask=col_ok, other=0.0)[None, :]
        logp = tl.where(col_ok[None, :], logp, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(logp, axis=1))
        # A row whose components so far all have log-weight -inf keeps sum 0 instead of exp(-inf + inf).
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(logp - shift[:, None]), axis=1)
        run_max = new_max
    tl.store(out_ptr + rows, run_max + tl.log(run_sum), mask=row_ok)


def _normal_kernel(key_ptr, out_ptr, start, n_values, dim, B, BLOCK: tl.constexpr):
    """out[s, b, j] = tl.randn(key[b], (start + s) * dim + j) for the n_values = n * dim values of example b;
    grid (value blocks, examples)."""
    b = tl.program_id(1)
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < n_values
    z = tl.randn(tl.load(key_ptr + b), start * dim + offsets)
    rows = (offsets // dim).to(tl.int64)
    tl.store(out_ptr + rows * B * dim + b * dim + offsets % dim, z, mask=ok)


def bernoulli_log_lik(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    x: torch.Tensor,
    backend: str = "torch",
    options: KernelOptions | None = None,
) -> torch.Tensor:
    """sum_j x_bj l_kbj - softplus(l_kbj) with l = h W^T + bias: the Bernoulli log-likelihood, [K, B].

    h [K, B, H] decoder features, weight [D, H], bias [D], x [B, D]. ``torch`` materialises the
    logits; ``triton`` never does (computed in float32, no gradient), with the precision and
    ``bernoulli`` tiles of ``options`` (default :data:`DEFAULT_OPTIONS`).
    """
    _check_backend(backend, h, weight, bias, x)
    options = _options(options)
    if backend == "torch":
        # sum_j x_j l_j = h . (W^T x) + b . x: a small product instead of a pass over the logits
        data_term = (h * (x @ weight)).sum(-1) + x @ bias
        return data_term - F.softplus(F.linear(h, weight, bias)).sum(-1)
    k, b, n_hidden = h.shape
    n_pixels = weight.shape[0]
    rows = h.detach().reshape(k * b, n_hidden).float()
    out = torch.empty(k * b, dtype=torch.float32, device=h.device)
    if out.numel():
        w, x32 = weight.detach().float(), x.detach().float()
        _jitted["_bernoulli_kernel"][(triton.cdiv(k * b, options.bernoulli.block_m),)](
            rows,
            w,
            bias.detach().float().contiguous(),
            x32,
            out,
            k * b,
            b,
            n_pixels,
            n_hidden,
            rows.stride(0),
            rows.stride(1),
            w.stride(0),
            w.stride(1),
            x32.stride(0),
            x32.stride(1),
            PRECISION=options.precision,
            **options.bernoulli.launch(),
        )
    return out.reshape(k, b).to(torch.promote_types(h.dtype, torch.float32))


def mixture_log_prob(
    z: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    log_mix: torch.Tensor,
    backend: str = "torch",
    options: KernelOptions | None = None,
) -> torch.Tensor:
    """log sum_c exp(log_mix_c + log N(z; loc_c, diag scale_c^2)): z [..., d], loc/scale [C, d], log_mix [C] -> [...].

    ``torch`` is ``vaebench.core.mixture.mixture_log_prob``; ``triton`` never forms the [S, C] table
    (computed in float32, no gradient), with the precision and ``mixture`` tiles of ``options``
    (default :data:`DEFAULT_OPTIONS`).
    """
    _check_backend(backend, z, loc, scale, log_mix)
    options = _options(options)
    if backend == "torch":
        return mixture.mixture_log_prob(z, loc, scale, log_mix)
    n_components, dim = loc.shape
    loc, scale = loc.detach().float(), scale.detach().float()
    precision = scale.pow(-2)
    quadratic = (-0.5 * precision).T.contiguous()  # [d, C]
    linear = (loc * precision).T.contiguous()  # [d, C]
    const = (
        log_mix.detach().float()
        - 0.5 * (loc.pow(2) * precision).sum(1)
        - scale.log().sum(1)
        - 0.5 * dim * math.log(2 * math.pi)
    ).contiguous()
    flat = z.detach().reshape(-1, dim).float()
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=z.device)
    if out.numel():
        _jitted["_mixture_kernel"][(triton.cdiv(flat.shape[0], options.mixture.block_m),)](
            flat,
            quadratic,
            linear,
            const,
            out,
            flat.shape[0],
            n_components,
            dim,
            flat.stride(0),
            flat.stride(1),
            quadratic.stride(0),
            quadratic.stride(1),
            PRECISION=options.precision,
            **options.mixture.launch(),
        )
    return out.reshape(z.shape[:-1]).to(torch.promote_types(z.dtype, torch.float32))


KEY_INDEX_BITS = 40
NORMAL_BLOCK = 1024
MAX_GRID_Y = 65535


def keyed_normals(
    seed: int, index: torch.Tensor, start: int, stop: int, dim: int, device: torch.device | str = "cuda"
) -> torch.Tensor:
    """Standard normals [stop - start, B, dim] from Triton's counter-based Philox (``tl.randn``).

    Value (s, b, j) is Philox keyed by ``seed * 2**40 + index[b]`` at counter ``s * dim + j``: a pure
    function of (seed, example, sample, coordinate), so any batching or chunking gives the same
    numbers, and distinct (seed, example) keys never share a stream. One launch for the whole
    [samples, batch] block. Needs CUDA, or ``TRITON_INTERPRET=1`` on the CPU (a test aid).
    """
    if not 0 <= seed < 2 ** (63 - KEY_INDEX_BITS):
        raise ValueError(f"seed={seed}: use an integer in 0..{2 ** (63 - KEY_INDEX_BITS) - 1}")
    if stop * dim >= 2**31:
        raise ValueError(
            f"{stop} samples of dimension {dim}: the Philox counter (sample * dim + j) must stay "
            "below 2**31; use fewer samples"
        )
    index = torch.as_tensor(index, dtype=torch.int64)
    if len(index) and not (0 <= int(index.min()) and int(index.max()) < 2**KEY_INDEX_BITS):
        raise ValueError(f"example indices must lie in 0..2**{KEY_INDEX_BITS} - 1")
    if len(index) > MAX_GRID_Y:
        raise ValueError(
            f"{len(index)} examples in one call: at most {MAX_GRID_Y} (a CUDA grid limit); use smaller batches"
        )
    problem = triton_problem(device)
    if problem is not None:
        raise RuntimeError(
            f"seeded sampling on CUDA draws from Triton's Philox, which cannot run here: {problem}; "
            "or evaluate with --device cpu (numpy's Philox)"
        )
    keys = (index + (seed << KEY_INDEX_BITS)).to(device)
    n = stop - start
    out = torch.empty(n, len(index), dim, dtype=torch.float32, device=keys.device)
    if out.numel():
        _jitted["_normal_kernel"][(triton.cdiv(n * dim, NORMAL_BLOCK), len(index))](
            keys, out, start, n * dim, dim, len(index), BLOCK=NORMAL_BLOCK
        )
    return out
