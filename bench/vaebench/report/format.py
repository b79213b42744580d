"""What every part of the report shares: the datasets' sizes and names, units, and numbers as table text."""

from __future__ import annotations

import math

import pandas as pd

# Pixels per image (D) of the known datasets: bits per dimension divide by D.
PIXELS = {
    "binarized-mnist": 784,
    "mnist": 784,
    "fashion-mnist": 784,
    "omniglot-28": 784,
    "caltech-silhouettes": 784,
    "frey-faces": 560,
    "digits": 64,
}
# How the report names each dataset in titles; where our data differ from the papers', the title says how.
DATASET_TITLES = {
    "binarized-mnist": "static binarized MNIST",
    "mnist": "MNIST, dynamically binarized",
    "fashion-mnist": "Fashion-MNIST, dynamically binarized",
    "omniglot-28": "Omniglot 28x28 (resized here)",
    "caltech-silhouettes": "Caltech 101 Silhouettes (own split)",
    "frey-faces": "Frey Faces, 8-bit grey (own split)",
    "digits": "scikit-learn 8x8 digits",
}
DATASET_ORDER = tuple(PIXELS)


def dataset_title(dataset: str) -> str:
    return DATASET_TITLES.get(dataset, dataset)


def ordered_datasets(names) -> list[str]:
    """The datasets of ``names`` (any iterable, repeats allowed): known ones in :data:`DATASET_ORDER`, then the rest
    alphabetically."""
    present = set(names)
    return [d for d in DATASET_ORDER if d in present] + sorted(present - set(DATASET_ORDER))


def pixels(dataset: str, entry=None) -> int | None:
    """D of ``dataset``: from :data:`PIXELS`, else the entry's built-in model (``x_dim``), else None."""
    if dataset in PIXELS:
        return PIXELS[dataset]
    model = getattr(entry, "model", None)
    return getattr(model, "x_dim", None)


def bits_per_dim(log_likelihood: float, d: int | None) -> float:
    """-log p(x) / (D ln 2): a log-likelihood in nats per image as bits per dimension (NaN without D)."""
    return math.nan if d is None else -log_likelihood / (d * math.log(2))


def bits_per_dim_se(se: float, d: int | None) -> float:
    """A standard error in nats per image as bits per dimension."""
    return math.nan if d is None else se / (d * math.log(2))


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def fmt(value, digits: int = 2) -> str:
    """A number as table text with ``digits`` decimals; empty for a missing value."""
    return "" if missing(value) else f"{value:.{digits}f}"


def fmt_se(value, se, digits: int = 2) -> str:
    """``value ± se``; the value alone when the s.e. is missing, empty when the value is."""
    if missing(value):
        return ""
    return f"{value:.{digits}f}" if missing(se) else f"{value:.{digits}f} ± {se:.{digits}f}"


def markdown(frame: pd.DataFrame) -> str:
    """A frame as a Markdown table (pipes in cells escaped)."""

    def cell(v) -> str:
        return "" if missing(v) else str(v).replace("|", "\\|")

    header = "| " + " | ".join(map(cell, frame.columns)) + " |\n| " + " | ".join("---" for _ in frame.columns) + " |\n"
    return header + "".join("| " + " | ".join(map(cell, row)) + " |\n" for row in frame.itertuples(index=False))


def published(entry, metric: str) -> float:
    """The entry's published value of ``metric`` (NaN if none, or no entry)."""
    if entry is None:
        return math.nan
    return next((p.value for p in entry.published if p.metric == metric), math.nan)


def value(row, column: str):
    """``row.column`` of a ``records_frame`` row (a namedtuple or Series), None where absent or missing."""
    got = getattr(row, column, None)
    return None if missing(got) else got
