"""Command line of the VAE evaluation suite from a checkout, without installing: ``python run_bench.py --help``.

The same as the ``vaebench`` command that ``pip install .`` provides.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))

from vaebench.cli import run  # noqa: E402

if __name__ == "__main__":
    run()
