"""Command line of the VAE evaluation suite from a checkout, without installing: ``python run_bench.py --help``.

The same as the ``vaebench`` command that ``pip install .`` provides.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))

if __name__ == "__main__":
    try:
        from vaebench.cli import run  # importing torch takes a few seconds: a Ctrl-C then is no traceback either
    except KeyboardInterrupt:
        print("interrupted before anything ran: nothing was changed", file=sys.stderr)
        sys.exit(130)
    run()
