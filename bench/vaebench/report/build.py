"""The report: ``metrics.csv``, the figures, the image grids and ``tables.md``, from the stored records and the
registry's checkpoints."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from vaebench.protocol import registry
from vaebench.protocol.record import Record
from vaebench.protocol.registry import Entry
from vaebench.protocol.results import ResultsError, all_records, check_writable, records_frame, write_metrics_csv
from vaebench.report.document import Context, write_tables
from vaebench.report.images import image_grids
from vaebench.report.per_example import load_per_example, whole_test_estimates
from vaebench.report.plots import theme, write_plots
from vaebench.report.posterior import latent_size, plot_posterior_2d


def current_records(out: Path, entries: dict[str, Entry]) -> tuple[list[Record], list[Record]]:
    """The stored records whose model's checkpoint is unchanged since evaluation (models outside the registry, e.g.
    one-off ``--model`` runs, are kept as stored), and the stale records left out."""
    kept, stale = [], []
    for record in all_records(out):
        entry = entries.get(record.model)
        if entry is not None and entry.trained and registry.file_hash(entry.checkpoint) != record.checkpoint_sha256:
            stale.append(record)
        else:
            kept.append(record)
    return kept, stale


def model_figures(
    records: list[Record], entries: dict[str, Entry], out: Path, data_dir: str | os.PathLike | None = None
) -> Iterator[tuple[str, list[Path]]]:
    """Image grids of every trained registry model with a current record, and ``posterior_2d_NAME.png`` for those
    with a 2-D latent; yields (model, paths written) per model."""
    datasets = {}
    theme()
    for record in records:
        entry = entries.get(record.model)
        if entry is None or not entry.trained:
            continue
        model = registry.load(entry)
        if (entry.dataset, entry.n_valid) not in datasets:
            datasets[entry.dataset, entry.n_valid] = entry.load_data(data_dir)
        data = datasets[entry.dataset, entry.n_valid]
        written = image_grids(record.model, model, data, out)
        if latent_size(model) == 2:
            written.append(plot_posterior_2d(record.model, model, data, out))
        yield record.model, written


def write_report(out: Path, entries: dict[str, Entry], data_dir: str | os.PathLike | None = None) -> Iterator[str]:
    """Write ``metrics.csv``, the figures, the image grids and ``tables.md``; yields what it did, line by line."""
    out = Path(out)
    check_writable(out)
    records, stale = current_records(out, entries)
    for r in stale:
        yield (f"{r.model}: not ranked, its checkpoint changed since it was evaluated; run `vaebench eval {r.model}`")
    if not records:
        raise ResultsError(f"no current results under {out}/records: run `vaebench eval` first")
    yield f"wrote {write_metrics_csv(out, records)}"
    frame = records_frame(records)
    values = load_per_example(frame, out, {r.model: r for r in records})
    figures = write_plots(frame, entries, out)
    yield f"wrote {', '.join(str(p) for p in figures)}"
    for name, written in model_figures(records, entries, out, data_dir):
        figures += written
        yield f"{name}: wrote {', '.join(str(p) for p in written)}"
    context = Context(
        records=frame,
        entries=entries,
        out=out,
        values=values,
        whole=whole_test_estimates(values),
        stale=stale,
        figures=figures,
    )
    yield f"wrote {write_tables(context)}"
