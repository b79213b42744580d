"""Subcommands of ``run_bench.py``; each returns an exit status."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


class UsageError(ValueError):
    """Bad command-line input; the message says what to change."""


def code_version() -> str:
    """``git describe``-style id of the code: the commit, with ``-dirty`` for uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def resolve_device(name: str) -> torch.device:
    """A usable torch device from ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, or a :class:`UsageError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device name: use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"--device {name}: no such CUDA device here ({torch.cuda.device_count()} visible); "
                         "use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: only cpu and cuda are supported")
    return device


def cmd_list(args: argparse.Namespace) -> int:
    from models.registry import ENTRIES

    print(f"{'name':24} {'dataset':16} {'prior':10} {'levels':6} {'objective':10} trained")
    for e in ENTRIES:
        trained = "yes" if e.checkpoint.is_file() else "no"
        objective = f"{e.train.objective}-k{e.train.k}"
        print(f"{e.name:24} {e.dataset:16} {e.model.prior:10} {e.model.levels:<6} {objective:10} {trained}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from models import registry
    from models.train import train

    entry = registry.get(args.name)
    device = resolve_device(args.device)
    data = entry.load_data(args.data_dir)
    model = registry.build(entry, data)
    meta = {"name": entry.name, "dataset": entry.dataset, "model": asdict(entry.model),
            "code_version": code_version(), "data_sha256": registry.data_checksum(data),
            "torch": str(torch.__version__), "device": str(device)}
    st = train(model, data, entry.train, entry.state, entry.checkpoint, meta, args.max_epochs, str(device))
    status = "finished" if st["done"] else "paused (run the same command to continue)"
    print(f"{entry.name}: epoch {st['epoch']}, best validation ELBO {st['best']:.3f}, {status}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_bench.py", description=__doc__)
    p.add_argument("--data-dir", help="dataset directory (default: $VAEBENCH_DATA or ~/.cache/vaebench/data)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("list", help="the registry and which entries are trained").set_defaults(func=cmd_list)
    t = sub.add_parser("train", help="train or resume one registry entry")
    t.add_argument("name")
    t.add_argument("--max-epochs", type=int, help="stop this run after this many more epochs (resume later)")
    t.set_defaults(func=cmd_train)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from bench.data import DataError
    from models.checkpoint import CheckpointError

    try:
        return args.func(args)
    except (UsageError, DataError, CheckpointError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) else str(err)
        print(f"error: {message}", file=sys.stderr)
        return 2
