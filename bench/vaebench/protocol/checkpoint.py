"""Atomic, code-free checkpoint files: tensors and plain values, loaded with ``weights_only=True``.

A checkpoint is a dict holding ``"model"``, a state_dict (a dict of tensors by name), and optionally
``"meta"``, a dict of plain values; a bare state_dict is accepted too. :func:`load_state` checks that
structure; :func:`check_weights` checks the tensors against a model (names, shapes, dtypes).
"""

from __future__ import annotations

import errno
import json
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from vaebench.protocol.files import atomic_path, atomic_write_text

EXPECTED = (
    'a dict with "model": a dict of tensors by name (a state_dict) and optionally "meta": a dict; save '
    "one with torch.save({'model': model.state_dict(), 'meta': {...}}, path)"
)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, unsafe or does not match its registry entry."""


def atomic_save(obj: dict, path: Path) -> None:
    """``torch.save`` atomically (temporary file, then rename); a failed write (torch reports a full disk as a
    RuntimeError) is an ``OSError`` naming ``path``, and the previous file is intact."""
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except RuntimeError as err:
        raise OSError(errno.EIO, f"could not write the file ({str(err).splitlines()[0][:120]})", str(path)) from None


def atomic_write_json(obj: dict, path: Path) -> None:
    """Write JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=1, default=float) + "\n")


def load_state(path: Path) -> dict:
    """Load a checkpoint without executing code and check its structure (:func:`check_structure`); a
    :class:`CheckpointError` naming the file and the fix for a missing, corrupt, unsafe or malformed one."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: train it with `python run_bench.py train NAME`")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt (not a torch zip archive); delete it "
            "and retrain, or restore it with `git checkout -- <path>`"
        )
    try:
        with warnings.catch_warnings():  # torch's own notes (e.g. on sparse tensors): the checks below speak
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # the unpickler met no class or function: a damaged pickle
            raise CheckpointError(
                f"checkpoint {path} is corrupt ({str(err).splitlines()[0]}); delete it and "
                "retrain, or restore it with `git checkout -- <path>`"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain "
            f"values, which could run code when loaded ({str(err).splitlines()[0]}). "
            "Do not use it; retrain or fetch the file again"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); delete it and retrain, or "
            "restore it with `git checkout -- <path>`"
        ) from None
    check_structure(saved, path)
    return saved


def check_structure(saved: Any, path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``saved`` is a dict whose ``"model"`` is a dict of tensors by name
    and whose ``"meta"``, if any, is a dict; a dict of tensors without ``"model"`` (a bare state_dict) passes."""
    problem = _structure_problem(saved)
    if problem:
        raise CheckpointError(f"checkpoint {path} {problem}; expected {EXPECTED}")


def _structure_problem(saved: Any) -> str:
    """What is wrong with the structure of a loaded checkpoint, or "" when nothing is."""
    if not isinstance(saved, dict):
        return f"holds {_kind(saved)}, not a dict"
    if "model" not in saved:
        if saved and not _tensor_problem(saved):
            return ""  # a bare state_dict
        keys = ", ".join(repr(k) for k in list(saved)[:5]) or "none"
        return f'has no "model" entry (its keys: {keys})'
    if "meta" in saved and not isinstance(saved["meta"], dict):
        return f'has a "meta" that is {_kind(saved["meta"])}, not a dict'
    if not isinstance(saved["model"], dict):
        return f'has a "model" that is {_kind(saved["model"])}, not a dict of tensors'
    if not saved["model"]:
        return 'has an empty "model"'
    return _tensor_problem(saved["model"])


def _tensor_problem(weights: dict) -> str:
    """The first entry of ``weights`` that is not a dense tensor with values under a string name, or "" when
    there is none (a sparse tensor, or a meta tensor of a model saved before its weights existed, is refused)."""
    for key, value in weights.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            return f'has {_kind(value)} under {key!r} in "model", not a tensor'
        if value.layout != torch.strided:
            return f'has a {value.layout} tensor under {key!r} in "model", not a dense one (save .to_dense())'
        if value.is_meta:
            return f'has a meta tensor under {key!r} in "model": shapes without values (save the trained weights)'
    return ""


def _kind(obj: Any) -> str:
    """``a Tensor``, ``a list``, ``a str``: the type of ``obj`` with its article, for error messages."""
    name = type(obj).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def weight_problems(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> list[str]:
    """The missing, unexpected and mis-shaped keys of ``weights`` and the tensors whose dtype differs from the
    model's (``load_state_dict`` would cast float16 or int64 weights to float32 without a word), one line each
    kind; empty when ``weights`` fit ``model`` exactly."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [
        f"{k} {tuple(weights[k].shape)} (model {tuple(v.shape)})"
        for k, v in own.items()
        if k in weights and weights[k].shape != v.shape
    ]
    dtypes = [
        f"{k} {weights[k].dtype} (model {v.dtype})"
        for k, v in own.items()
        if k in weights and weights[k].dtype != v.dtype
    ]
    return [
        f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes), ("dtype", dtypes))
        if items
    ]


def check_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Raise :class:`CheckpointError` naming ``path`` and every :func:`weight_problems` (no silent casts)."""
    problems = weight_problems(model, weights)
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model ({'; '.join(problems)}); it was written "
            "for other settings or converted: delete it and retrain, or restore it with git"
        )
