"""The VAE evaluation suite's command line. With no arguments: evaluate what is trained, write the report.

    python run_bench.py list                 the registry and what is trained
    python run_bench.py train NAME           train (or resume training) one registry entry
    python run_bench.py eval [NAMES]         full protocol on trained models -> results/metrics.csv
    python run_bench.py report               tables and plots from stored results
    python run_bench.py check                quick protocol vs the committed baseline (CI)
"""
from __future__ import annotations

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
