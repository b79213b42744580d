"""Command line of the VAE evaluation suite: ``python run_bench.py --help``."""
import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
