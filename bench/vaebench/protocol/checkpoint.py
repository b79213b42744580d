"""Atomic, code-free checkpoint files: tensors and plain values, loaded with ``weights_only=True``."""
from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch

from vaebench.protocol.files import atomic_path, atomic_write_text


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, unsafe or does not match its registry entry."""


def atomic_save(obj: dict, path: Path) -> None:
    """``torch.save`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_json(obj: dict, path: Path) -> None:
    """Write JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=1, default=float) + "\n")


def load_state(path: Path) -> dict:
    """Load a checkpoint without executing code; clear errors for missing, corrupt or unsafe files."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: train it with `python run_bench.py train NAME`")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (not a torch zip archive); delete it "
                              "and retrain, or restore it with `git checkout -- <path>`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # the unpickler met no class or function: a damaged pickle
            raise CheckpointError(f"checkpoint {path} is corrupt ({str(err).splitlines()[0]}); delete it and "
                                  "retrain, or restore it with `git checkout -- <path>`") from None
        raise CheckpointError(f"checkpoint {path} was refused: it holds objects other than tensors and plain "
                              f"values, which could run code when loaded ({str(err).splitlines()[0]}). "
                              "Do not use it; retrain or fetch the file again") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); delete it and retrain, or "
                              "restore it with `git checkout -- <path>`") from None
