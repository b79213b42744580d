"""The report: ``tables.md`` and the plots, from the stored records and the registry's checkpoints."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from vaebench.protocol import registry
from vaebench.protocol.registry import Entry
from vaebench.protocol.results import ResultsError, all_records, check_writable, records_frame, write_metrics_csv
from vaebench.report.tables import image_grids, plot_posterior_2d, write_plots, write_tables


def current_records(out: Path, entries: dict[str, Entry]) -> tuple[list, list[str]]:
    """The stored records whose model's checkpoint is unchanged since evaluation (models outside the
    registry, e.g. one-off ``--model`` runs, are kept as stored), and the names left out."""
    kept, stale = [], []
    for record in all_records(out):
        entry = entries.get(record.model)
        if entry is not None and entry.trained and registry.file_hash(entry.checkpoint) != record.checkpoint_sha256:
            stale.append(record.model)
        else:
            kept.append(record)
    return kept, stale


def write_report(out: Path, entries: dict[str, Entry], data_dir: str | os.PathLike | None = None) -> Iterator[str]:
    """Write ``metrics.csv``, ``tables.md``, the plots and the image grids; yields what it did, line by line."""
    check_writable(out)
    records, stale = current_records(out, entries)
    for name in stale:
        yield f"{name}: left out, its checkpoint changed since it was evaluated; run `vaebench eval {name}`"
    if not records:
        raise ResultsError(f"no stored results under {out}/records: run `vaebench eval` first")
    write_metrics_csv(out, records)
    frame = records_frame(records)
    write_tables(frame, entries, out)
    write_plots(frame, entries, out)
    for record in records:
        entry = entries.get(record.model)
        if entry is None or not entry.trained:
            continue
        model, data = registry.load(entry), entry.load_data(data_dir)
        image_grids(record.model, model, data, out)
        if entry.model is not None and entry.model.z_dim == 2 and entry.model.levels == 1:
            plot_posterior_2d(record.model, model, data, out)
    yield f"wrote {out}/metrics.csv, {out}/tables.md and plots"
