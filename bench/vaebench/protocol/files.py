"""Atomic file writes (write beside the target, then rename over it, so readers never see half a file) and the
content digests that tell a file damaged on disk from a good one."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

TEMPORARY_MARK = ".tmp"


def is_temporary(path: Path) -> bool:
    """True for the hidden temporary files :func:`atomic_path` writes (and any other hidden file)."""
    return path.name.startswith(".")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder (hidden, same suffix); rename it over ``path`` on success,
    remove it on failure. An interrupted write leaves the previous ``path`` intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}{TEMPORARY_MARK}{os.getpid()}{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def content_digest(obj: object) -> str:
    """sha256 of nested dicts, lists and tuples of tensors and plain values (a tensor by dtype, shape and bytes).

    Stored beside a cache, a progress or a training-state file, it tells a file damaged on disk (a flipped bit in
    a number, which torch.load reads without complaint) from a good one."""
    digest = hashlib.sha256()

    def feed(item: object) -> None:
        if isinstance(item, torch.Tensor):
            t = item.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(item, dict):
            digest.update(f"D{len(item)}".encode())
            for key in sorted(item, key=repr):
                feed(key)
                feed(item[key])
        elif isinstance(item, list | tuple):
            digest.update(f"L{len(item)}".encode())
            for value in item:
                feed(value)
        else:
            digest.update(f"V{type(item).__name__}:{item!r}".encode())

    feed(obj)
    return digest.hexdigest()
