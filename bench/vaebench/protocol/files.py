"""Atomic file writes: write beside the target, then rename over it, so readers never see half a file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
