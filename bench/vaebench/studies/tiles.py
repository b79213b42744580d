"""Tile sweep of the fused kernels: ``python -m vaebench.studies.tiles`` -> ``results/tiles.csv``.

Each kernel runs on the protocol's VampPrior MNIST shapes at K = 5000 and 20 images per batch (S =
100,000 rows): the Bernoulli decoder head (features [S, 300] -> 784 logits, 2 S H D FLOPs) and the
mixture prior (z [S, 40] against 500 components, 4 S d C FLOPs), once per tile configuration in a grid
(BLOCK_M x BLOCK_N x BLOCK_K x num_warps x num_stages) and dot precision. A row holds the median time
(``triton.testing.do_bench``), the FLOP rate and the largest error against float64 on the same
inputs, so a fast but wrong configuration shows. Each configuration reaches the kernels as a
``kernels.KernelOptions`` argument (nothing global is switched). The committed tiles
(``kernels.BERNOULLI_TILES``, ``kernels.MIXTURE_TILES``: the defaults of ``KernelOptions``) come first
and are marked; a ``torch`` row times the plain torch path on the same shapes. The fastest row of
each kernel is the candidate for the committed tiles.

Timing needs compiled kernels on CUDA. ``--shape small`` under ``TRITON_INTERPRET=1`` on the CPU checks
every configuration's answer on shapes no tile divides (its times mean nothing).
CSV columns: device_name, kernel, precision, block_m, block_n, block_k, num_warps, num_stages,
committed, ms, tflops, max_abs_error, note.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from vaebench.core import kernels, mixture
from vaebench.protocol.files import atomic_write_text
from vaebench.studies.speed import device_name

# rows S (K samples x B images), images per batch B, hidden H, pixels D, latent d, components C; "small"
# spans several tiles of every size in every dimension, none a multiple of a tile, so every mask and
# every loop-carried sum (over H, D, d and the online logsumexp over C) is exercised.
SHAPES = {
    "protocol": {"S": 100_000, "B": 20, "H": 300, "D": 784, "d": 40, "C": 500},
    "small": {"S": 259, "B": 7, "H": 37, "D": 133, "d": 37, "C": 137},
}
GRID = {
    "block_m": (32, 64, 128),
    "block_n": (32, 64, 128),
    "block_k": (16, 32),
    "num_warps": (4, 8),
    "num_stages": (2, 3),
}  # the fields of kernels.Tiles
COLUMNS = [
    "device_name",
    "kernel",
    "precision",
    "block_m",
    "block_n",
    "block_k",
    "num_warps",
    "num_stages",
    "committed",
    "ms",
    "tflops",
    "max_abs_error",
    "note",
]


def configs(kernel: str) -> list[kernels.Tiles]:
    """The committed tiles of ``kernel`` first, then every other point of ``GRID``."""
    committed = kernels.DEFAULT_OPTIONS.tiles(kernel)
    grid = [kernels.Tiles(**dict(zip(GRID, values))) for values in itertools.product(*GRID.values())]
    return [committed, *(c for c in grid if c != committed)]


def inputs(shape: dict[str, int]) -> dict[str, torch.Tensor]:
    """Fixed random float32 inputs of both kernels for ``shape`` (seed 0): features [S/B, B, H] in (0, 1) as
    gated features are, weight [D, H], bias [D], binary x [B, D]; z [S, d], loc and scale [C, d], log_mix [C]."""
    g = torch.Generator().manual_seed(0)
    rows, batch, hidden, pixels, latent, components = (shape[key] for key in ("S", "B", "H", "D", "d", "C"))
    return {
        "features": torch.rand(rows // batch, batch, hidden, generator=g),
        "weight": 3 * torch.randn(pixels, hidden, generator=g) / math.sqrt(hidden),
        "bias": torch.randn(pixels, generator=g),
        "x": (torch.rand(batch, pixels, generator=g) < 0.3).float(),
        "z": torch.randn(rows, latent, generator=g),
        "loc": torch.randn(components, latent, generator=g),
        "scale": torch.exp(0.3 * torch.randn(components, latent, generator=g)),
        "log_mix": torch.log_softmax(torch.randn(components, generator=g), 0),
    }


Run = Callable[..., torch.Tensor]  # run(backend, options=None): one kernel call on the case's inputs


def case(kernel: str, shape: dict[str, int], device: torch.device) -> tuple[Run, torch.Tensor, float]:
    """(run(backend, options=None) on :func:`inputs`, the float64 answer on the same float32 values, FLOPs of
    one run): 2 S H D for ``bernoulli``, 4 S d C for ``mixture``. ``options`` (a ``kernels.KernelOptions``)
    sets the Triton kernel's precision and tiles."""
    t = inputs(shape)
    if kernel == "bernoulli":
        args = [t[key].to(device) for key in ("features", "weight", "bias", "x")]
        reference = kernels.bernoulli_log_lik(*(a.double() for a in args)).cpu()
        flops = 2.0 * reference.numel() * t["weight"].numel()
        return (
            lambda backend, options=None: kernels.bernoulli_log_lik(*args, backend=backend, options=options),
            reference,
            flops,
        )
    args = [t[key].to(device) for key in ("z", "loc", "scale", "log_mix")]
    reference = mixture.mixture_log_prob(*(a.double() for a in args)).cpu()
    flops = 4.0 * reference.numel() * t["loc"].numel()
    return (
        lambda backend, options=None: kernels.mixture_log_prob(*args, backend=backend, options=options),
        reference,
        flops,
    )


def timed_ms(fn: Callable[[], torch.Tensor], device: torch.device) -> float:
    """Median milliseconds of ``fn``: ``triton.testing.do_bench`` on CUDA, one call elsewhere."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, return_mode="median"))
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


def _row(
    common: dict,
    tiles: kernels.Tiles | None,
    fn: Callable[[], torch.Tensor],
    reference: torch.Tensor,
    flops: float,
    device: torch.device,
) -> dict:
    """One row: ``common`` and the tile columns, then the largest error of ``fn()`` against ``reference``,
    its median time and FLOP rate; a note instead when it fails."""
    out = {"committed": False, **common, **{col: None if tiles is None else getattr(tiles, col) for col in GRID}}
    try:
        error = (fn().double().cpu() - reference).abs().max().item()
        ms = timed_ms(fn, device)
    except Exception as err:  # a configuration the compiler or the device rejects is a result too
        return {**out, "note": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    return {**out, "ms": ms, "tflops": flops / ms / 1e9, "max_abs_error": error}


def sweep(
    shape: dict[str, int],
    device: torch.device,
    precisions: tuple[str, ...] = ("ieee",),
    kernel_names: tuple[str, ...] = kernels.KERNELS,
    budget_s: float = math.inf,
    limit: int | None = None,
) -> Iterator[dict]:
    """Rows (see the module docstring): per kernel the torch path, then each precision and configuration
    (the first ``limit`` of :func:`configs`), each passed as a ``kernels.KernelOptions``, until that
    kernel's ``budget_s`` seconds are spent."""
    name = device_name(device)
    for kernel in kernel_names:
        started = time.perf_counter()
        run, reference, flops = case(kernel, shape, device)
        common = {"device_name": name, "kernel": kernel}
        yield _row({**common, "precision": "torch"}, None, lambda run=run: run("torch"), reference, flops, device)
        candidates = configs(kernel)[:limit]
        for precision, tiles in tqdm(list(itertools.product(precisions, candidates)), desc=kernel, unit="config"):
            if time.perf_counter() - started > budget_s:
                yield {
                    **common,
                    "precision": precision,
                    "note": f"budget of {budget_s:g} s spent: the remaining configurations were not timed",
                }
                break
            options = kernels.KernelOptions(precision=precision).with_tiles(kernel, tiles)
            result = _row(
                {**common, "precision": precision},
                tiles,
                lambda run=run, options=options: run("triton", options),
                reference,
                flops,
                device,
            )
            yield {**result, "committed": tiles is candidates[0]}


def main(argv: list[str] | None = None) -> int:
    """The command line: sweep, write the CSV atomically, print the fastest rows per kernel."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--shape",
        choices=tuple(SHAPES),
        default="protocol",
        help="protocol: the timed shapes; small: a correctness pass (with TRITON_INTERPRET=1 on the CPU)",
    )
    parser.add_argument("--precisions", nargs="+", choices=kernels.DOT_PRECISIONS, default=["ieee"])
    parser.add_argument("--kernels", nargs="+", choices=kernels.KERNELS, default=list(kernels.KERNELS))
    parser.add_argument("--budget", type=float, default=150.0, help="seconds per kernel")
    parser.add_argument("--out", type=Path, default=Path("results/tiles.csv"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if (problem := kernels.triton_problem(device)) is not None:
        parser.error(f"the kernels cannot run here: {problem} (on the CPU only --shape small, a correctness pass)")
    if args.shape == "protocol" and (device.type != "cuda" or kernels.interpreted()):
        parser.error("timing needs compiled kernels on CUDA; on the CPU use --shape small with TRITON_INTERPRET=1")
    table = pd.DataFrame(
        sweep(SHAPES[args.shape], device, tuple(args.precisions), tuple(args.kernels), args.budget), columns=COLUMNS
    )
    atomic_write_text(args.out, table.to_csv(index=False, float_format="%.6g"))
    timed = table.dropna(subset=["ms"])
    print(timed.sort_values(["kernel", "ms"]).groupby("kernel").head(5).to_string(index=False))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
