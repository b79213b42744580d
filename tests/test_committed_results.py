"""The committed results are what the README's main command (``run_bench.py`` with its defaults) would make:
every record is reused as it stands, and ``metrics.csv`` holds exactly the records' numbers."""

import os
from pathlib import Path

import pandas as pd
import pytest

from vaebench.protocol import registry
from vaebench.protocol.results import all_records, load_record, record_files, records_frame
from vaebench.protocol.runner import record_key
from vaebench.protocol.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
ENTRIES = registry.load_registry([registry.builtin_registry()])
DATA = os.environ.get("VAEBENCH_DATA")


def test_every_trained_entry_has_a_committed_record_and_no_record_is_orphaned():
    recorded = {path.stem for path in record_files(RESULTS)}
    assert recorded == {e.name for e in ENTRIES.values() if e.trained}


@pytest.mark.skipif(not DATA or not Path(DATA, "MNIST").is_dir(), reason="needs VAEBENCH_DATA with the MNIST files")
@pytest.mark.parametrize("entry", [e for e in ENTRIES.values() if e.trained], ids=lambda e: e.name)
def test_the_main_command_reuses_the_committed_record(entry):
    """The key the default ``eval`` computes (checkpoint, data, protocol version, settings) is the stored one."""
    key = record_key(entry, entry.load_data(DATA), Settings())
    assert load_record(RESULTS, entry.name, key) is not None, f"{entry.name} would be re-evaluated"


def test_metrics_csv_holds_the_records():
    stored = pd.read_csv(RESULTS / "metrics.csv")
    made = records_frame(all_records(RESULTS))
    assert list(stored.model) == list(made.model)
    numbers = [c for c in made.columns if pd.api.types.is_float_dtype(made[c])]
    pd.testing.assert_frame_equal(stored[numbers], made[numbers], rtol=0, atol=5e-7)  # written with %.6f
