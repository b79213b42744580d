"""Which code made a result: the git commit where there is one, and a hash of the package's source."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent
CHECKOUT = PACKAGE.parent.parent


def code_version() -> str:
    """``git describe``-style id of the checkout: the commit, with ``-dirty`` for uncommitted changes to
    tracked files other than the registry's checkpoints and the results (which training and evaluation
    themselves write); ``unknown`` outside a git checkout (an installed package)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=CHECKOUT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)models",
                ":(exclude)results",
            ],
            cwd=CHECKOUT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def source_hash() -> str:
    """SHA-256 (first 16 hex digits) of the package's Python source, every ``*.py`` by relative path and
    content. Identifies the code without git (a copied tree, an installed package)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
