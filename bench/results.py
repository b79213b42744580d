"""Stored evaluation results: one JSON record per model, assembled into ``metrics.csv``.

A record is reused while its key (checkpoint hash, protocol version and settings) is unchanged, so
a repeated run only evaluates what changed. Every file is written to a temporary name in the same
folder and renamed, so an interrupted run leaves the previous results intact.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import torch

from bench.files import atomic_path, atomic_write_text


class ResultsError(RuntimeError):
    """A stored result file is unreadable; the message names it."""


def check_writable(folder: Path) -> None:
    """Raise ``PermissionError`` naming ``folder`` unless files can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"output folder {folder} cannot be written ({err.strerror}); "
                              "choose another with --out") from None


def record_path(out: Path, name: str) -> Path:
    return out / "records" / f"{name}.json"


def load_record(out: Path, name: str, key: dict) -> dict | None:
    """The stored record of ``name`` if it was made with exactly ``key``, else None."""
    path = record_path(out, name)
    if not path.is_file():
        return None
    stored = _read(path)
    return stored["record"] if stored.get("key") == key else None


def _read(path: Path) -> dict:
    try:
        stored = json.loads(path.read_text())
        stored["record"]
        return stored
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ResultsError(f"{path} is not a stored record; delete it (or restore it with git) and rerun") from None


def save_record(out: Path, name: str, key: dict, record: dict, per_example: dict[str, torch.Tensor]) -> None:
    """Store a record (JSON) and its per-example values (gzipped CSV), both atomically."""
    for value in record.values():
        if isinstance(value, float) and not math.isfinite(value) and not math.isnan(value):
            raise FloatingPointError(f"model {name}: an infinite metric would reach the CSV; not stored")
    frame = pd.DataFrame({k: v.double().numpy() if v.is_floating_point() else v.numpy()
                          for k, v in per_example.items()}).set_index("test_index")
    with atomic_path(out / "per_example" / f"{name}.csv.gz") as tmp:
        frame.to_csv(tmp, compression={"method": "gzip", "mtime": 0}, float_format="%.6f")
    atomic_write_text(record_path(out, name), json.dumps({"key": key, "record": record}, indent=1) + "\n")


def all_records(out: Path) -> pd.DataFrame:
    """Every stored record as one tidy frame, a row per model."""
    return pd.DataFrame([_read(path)["record"] for path in sorted((out / "records").glob("*.json"))])


def write_metrics_csv(out: Path, frame: pd.DataFrame) -> Path:
    """``metrics.csv``: one row per model, every protocol number, written atomically."""
    path = out / "metrics.csv"
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.6f"))
    return path
