"""``vaebench compare A B [C ...]``: paired differences of models of one dataset over their shared test points.

Every pair is compared, in the order given (A − B, A − C, B − C, ...): the mean over the test points both models
saw of the per-point difference of log p(x) (L_K), of the ELBO and of the gap L_K − ELBO. The two models saw the
same images, so the spread of the images cancels: the standard error is sd(per-point differences) / sqrt(n), with
n the shared points, and the 95% interval is the mean ± 1.96 s.e. (normal approximation; each interval holds on
its own, not jointly over the pairs). "differs" when that interval excludes 0.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from itertools import combinations
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from vaebench.protocol.files import atomic_write_text
from vaebench.protocol.record import Record
from vaebench.protocol.results import ResultsError, read_record, record_files, record_path
from vaebench.report.per_example import read_per_example

Z95 = NormalDist().inv_cdf(0.975)  # 1.959963...
DIFFERS, SAME = "differs", "does not differ at 95%"
QUANTITIES = ("log p(x)", "ELBO", "gap")  # L_K, elbo, L_K - elbo
COLUMNS = ("A", "B", "quantity", "shared points", "mean A − B (nats)", "s.e. (nats)", "95% low", "95% high", "verdict")


def paired_difference(a: pd.Series, b: pd.Series) -> dict:
    """Mean of a − b over their shared index, its standard error sd / sqrt(n) (sample sd, n − 1), the 95% interval
    and the verdict. With one shared point the s.e. is unknown (NaN) and so is the verdict."""
    diff = (a - b).dropna()
    n = len(diff)
    mean = float(diff.mean()) if n else math.nan
    se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    low, high = mean - Z95 * se, mean + Z95 * se
    verdict = "unknown (one shared point)" if math.isnan(se) else DIFFERS if low > 0 or high < 0 else SAME
    return {
        "shared points": n,
        "mean A − B (nats)": mean,
        "s.e. (nats)": se,
        "95% low": low,
        "95% high": high,
        "verdict": verdict,
    }


def _record(out: Path, name: str) -> Record:
    path = record_path(out, name)
    if not path.is_file():
        evaluated = [p.stem for p in record_files(out)]
        close = difflib.get_close_matches(name, evaluated, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ResultsError(
            f"{name!r} has no stored results under {out / 'records'}{hint} (evaluated there: "
            f"{', '.join(evaluated) or 'none'}; `vaebench eval {name}` evaluates a registry model)"
        )
    return read_record(path)[1]


def _span(index: pd.Index) -> str:
    return f"{len(index)} points, indices {index.min()}..{index.max()}" if len(index) else "no points"


def compare_models(out: Path, models: list[str]) -> pd.DataFrame:
    """Paired differences (A − B for every pair, in the order given) of log p(x) = L_K, the ELBO and the gap
    L_K − ELBO over the shared test points, from ``out/per_example``. One row per pair and quantity (see
    :data:`COLUMNS`); ``attrs``: ``models``, ``dataset`` and ``notes`` (different K, different test subsets).

    A :class:`ResultsError` for fewer than two models, a name given twice, a model without stored results,
    models of different datasets and models without shared test points."""
    out = Path(out)
    if len(models) < 2:
        raise ResultsError(f"compare needs two or more models; got {len(models)}: {', '.join(models) or 'none'}")
    twice = sorted({m for m in models if models.count(m) > 1})
    if twice:
        raise ResultsError(f"{', '.join(twice)} given twice; name each model once")
    records = {m: _record(out, m) for m in models}
    datasets = {}
    for m, r in records.items():
        datasets.setdefault(r.dataset, []).append(m)
    if len(datasets) > 1:
        which = "; ".join(f"{', '.join(ms)} on {d}" for d, ms in datasets.items())
        raise ResultsError(f"models of different datasets cannot be compared point by point: {which}")
    frames = {m: read_per_example(out, m, records[m], need_elbo=True) for m in models}
    notes = []
    ks = {m: r.k for m, r in records.items()}
    if len(set(ks.values())) > 1:
        notes.append(
            "different K: " + ", ".join(f"{m} K = {k}" for m, k in ks.items()) + "; a larger K gives a "
            "tighter (higher) L_K, so part of a log p(x) difference may be the K's"
        )
    rows = []
    for a, b in combinations(models, 2):
        shared = frames[a].index.intersection(frames[b].index)
        if shared.empty:
            raise ResultsError(
                f"{a} and {b} share no test points ({a}: {_span(frames[a].index)}; "
                f"{b}: {_span(frames[b].index)}); evaluate both with the same --n-test"
            )
        if len(shared) < max(len(frames[a]), len(frames[b])):
            notes.append(
                f"{a} ({len(frames[a])} test points) and {b} ({len(frames[b])}) are compared on the "
                f"{len(shared)} points they share"
            )
        fa, fb = frames[a].loc[shared], frames[b].loc[shared]
        la, lb = fa.iloc[:, 0], fb.iloc[:, 0]
        for quantity, (x, y) in zip(
            QUANTITIES, ((la, lb), (fa["elbo"], fb["elbo"]), (la - fa["elbo"], lb - fb["elbo"]))
        ):
            rows.append({"A": a, "B": b, "quantity": quantity, **paired_difference(x, y)})
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table.attrs.update(
        models=list(models), dataset=next(iter(datasets)), notes=notes, k={m: r.k for m, r in records.items()}
    )
    return table


def comparison_stem(models: list[str]) -> str:
    """The file name (no suffix) of a comparison: ``A_vs_B_vs_C``; long lists, and names that themselves hold
    ``_vs_`` (``a_vs_b`` and ``c`` would meet ``a`` and ``b_vs_c``), end in a short hash of the list."""
    stem = "_vs_".join(models)
    digest = hashlib.sha256("\0".join(models).encode()).hexdigest()[:8]
    if len(stem) > 150:
        return f"{stem[:120]}_and_{len(models)}_models_{digest}"
    return f"{stem}_{digest}" if any("_vs_" in m for m in models) else stem


def write_comparison(out: Path, table: pd.DataFrame) -> list[Path]:
    """``out/compare/A_vs_B....csv`` (the table and the K of each model) and ``.png`` (the differences with their
    95% intervals); the paths written."""
    from vaebench.report.plots import plot_comparison

    models = table.attrs.get("models") or list(dict.fromkeys([*table["A"], *table["B"]]))
    stem = comparison_stem(models)
    folder = Path(out) / "compare"
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / f"{stem}.csv"
    k = table.attrs.get("k", {})
    written = table.assign(**{"K of A": table["A"].map(k), "K of B": table["B"].map(k)}) if k else table
    atomic_write_text(csv, written.to_csv(index=False, float_format="%.6f"))
    png = folder / f"{stem}.png"
    plot_comparison(table, png)
    return [csv, png]


def format_table(table: pd.DataFrame) -> str:
    """The comparison for the terminal: numbers in nats with 3 decimals."""
    shown = table.copy()
    for column, spec in (
        ("mean A − B (nats)", "+.3f"),
        ("s.e. (nats)", ".3f"),
        ("95% low", "+.3f"),
        ("95% high", "+.3f"),
    ):
        shown[column] = shown[column].map(lambda v, spec=spec: "" if np.isnan(v) else format(v, spec))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        return shown.to_string(index=False)
