"""Rounding error of L_K on trained models, per arithmetic set-up: ``python -m vaebench.studies.precision``.

For each registry model, L_K per image on a fixed random subset of its test set
(``vaebench.protocol.evaluate.test_subset``) is computed with the same seeded samples
(``vaebench.core.noise.seeded_noise``: the noise is drawn in float32 and shared) under each set-up and
compared with float64:

- ``float64``: model and data in float64, torch log-weights: the reference;
- ``torch-fp32``: float32, torch log-weights, full-precision matrix products (the protocol's default path);
- ``torch-tf32``: float32 with TF32 matrix products in every layer (``torch.set_float32_matmul_precision("high")``);
- ``triton-ieee``: float32, the fused kernels with full-precision products (``--backend triton``);
- ``triton-tf32x3`` / ``triton-tf32``: the fused kernels with three / one TF32 tensor-core products per
  float32 product (``KernelOptions(precision=...)``, passed to ``iwae_bound(..., kernel_options=)``).

The TF32 set-ups need CUDA and the Triton ones CUDA or the Triton interpreter; a set-up that cannot run is
listed as skipped. CSV columns: model, setup, device, images, k, mean_ll, mean_error (mean
over images of L_K - L_K(float64): the shift it puts on a reported test log-likelihood), max_abs_error (the
largest per-image |L_K - L_K(float64)|), seconds (wall time of the set-up's evaluation), note.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch

from vaebench.core import kernels
from vaebench.core.estimators import iwae_bound
from vaebench.protocol.evaluate import test_subset
from vaebench.protocol.files import atomic_write_text

SETUPS = ("float64", "torch-fp32", "torch-tf32", "triton-ieee", "triton-tf32x3", "triton-tf32")
DEFAULT_MODELS = ("vae-vampprior", "hvae-vampprior", "iwae-mnist-iwae-k5")
COLUMNS = ["model", "setup", "device", "images", "k", "mean_ll", "mean_error", "max_abs_error", "seconds", "note"]


@contextlib.contextmanager
def arithmetic(setup: str) -> Iterator[None]:
    """TF32 matrix products in every torch layer within the block for ``torch-tf32`` (torch's own global
    switch, ``torch.set_float32_matmul_precision``), restored on exit, errors included. The kernels'
    precision is not global: see :func:`kernel_options`."""
    matmul = torch.get_float32_matmul_precision()
    if setup == "torch-tf32":
        torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)


def kernel_options(setup: str) -> kernels.KernelOptions:
    """The fused kernels' options of ``setup``: ``triton-<precision>`` sets the dot precision; the other
    set-ups (which do not use the kernels) get the committed defaults."""
    if setup not in SETUPS:
        raise ValueError(f"unknown set-up {setup!r}: use one of {', '.join(SETUPS)}")
    if setup.startswith("triton-"):
        return kernels.KernelOptions(precision=setup.removeprefix("triton-"))
    return kernels.DEFAULT_OPTIONS


def skip_reason(setup: str, device: torch.device) -> str | None:
    """Why ``setup`` is not measured on ``device``, or None. ``triton-ieee`` also runs on the CPU under
    ``TRITON_INTERPRET=1`` (slowly: a correctness check, its seconds mean nothing)."""
    if setup not in SETUPS:
        raise ValueError(f"unknown set-up {setup!r}: use one of {', '.join(SETUPS)}")
    if "tf32" in setup and device.type != "cuda":
        return "skipped: TF32 needs CUDA"
    problem = kernels.triton_problem(device) if setup.startswith("triton") else None
    return None if problem is None else f"skipped: {problem}"


@torch.no_grad()
def bounds(
    model: torch.nn.Module, x: torch.Tensor, ids: torch.Tensor, k: int, setup: str, batch_size: int = 100
) -> torch.Tensor:
    """L_k per image [N] (float64) under ``setup``; image ``ids[i]`` keeps its seeded samples in every set-up."""
    if setup == "float64":
        model, x = copy.deepcopy(model).double(), x.double()
    backend = "triton" if setup.startswith("triton") else "torch"
    options = kernel_options(setup)
    with arithmetic(setup):
        parts = [
            iwae_bound(
                model,
                x[i : i + batch_size],
                k,
                seed=0,
                index=ids[i : i + batch_size],
                backend=backend,
                kernel_options=options,
            )
            for i in range(0, len(x), batch_size)
        ]
    return torch.cat(parts).double().cpu()


def measure(
    name: str, model: torch.nn.Module, x: torch.Tensor, ids: torch.Tensor, k: int, setups: tuple[str, ...] = SETUPS
) -> list[dict]:
    """One row per set-up (see the module docstring); ``float64`` is always computed as the reference."""
    device = x.device
    common = {"model": name, "device": str(device), "images": len(x), "k": k}
    reference = None
    rows = []
    for setup in ("float64", *(s for s in setups if s != "float64")):
        reason = skip_reason(setup, device)
        if reason:
            rows.append({**common, "setup": setup, "note": reason})
            continue
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        values = bounds(model, x, ids, k, setup)
        seconds = time.perf_counter() - start
        reference = values if reference is None else reference  # float64 comes first
        error = values - reference
        rows.append(
            {
                **common,
                "setup": setup,
                "mean_ll": float(values.mean()),
                "mean_error": float(error.mean()),
                "max_abs_error": float(error.abs().max()),
                "seconds": seconds,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    from vaebench.protocol import registry

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=list(DEFAULT_MODELS), help="registry names")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=1000, help="test images per model (a fixed random subset)")
    parser.add_argument("--k", type=int, default=5000, help="importance samples")
    parser.add_argument("--data-dir", default=None, help="dataset directory (default: $VAEBENCH_DATA)")
    parser.add_argument("--out", type=Path, default=Path("results/precision.csv"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu")
    if args.images < 1 or args.k < 1:
        parser.error("--images and --k must be at least 1")
    device = torch.device(args.device)
    entries = registry.load_registry()
    rows = []
    for name in args.models:
        try:
            entry = registry.get(entries, name)
        except registry.UnknownModelError as err:
            parser.error(str(err))
        if not entry.checkpoint.is_file():
            parser.error(f"{name} is not trained: run `vaebench train {name}` first")
        test = entry.load_data(args.data_dir).test
        ids = test_subset(len(test), min(args.images, len(test)))
        model = registry.load(entry).to(device).eval()
        rows += measure(name, model, test[ids].to(device), ids, args.k)
        print(pd.DataFrame(rows[-len(SETUPS) :], columns=COLUMNS).drop(columns=["note"]).to_string(index=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False, float_format="%.6g"))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
