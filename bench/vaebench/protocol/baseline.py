"""The regression check: quick-protocol numbers against a committed baseline file.

A metric passes when it moved by at most ``Z_CHECK`` x sqrt(se_baseline^2 + se_now^2), with the Monte
Carlo standard errors of both estimates (the spread a re-seeded run would show). It fails when it moved
more, when the checkpoint differs from the baseline's, when a baseline row has no current value or a current
value no baseline row, or when the baseline holds a non-finite number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vaebench.protocol.files import atomic_write_text
from vaebench.protocol.record import Record

Z_CHECK = 4.0
SE_RATIO = 10.0  # a baseline standard error this far from the current one (same checkpoint, settings) is damage
COLUMNS = ("model", "metric", "value", "se", "k", "n_test", "checkpoint_sha256")
CHECKED = {
    "log_likelihood": "log_likelihood_mc_se",
    "L_1": "L_1_mc_se",
    "elbo": "elbo_mc_se",
    "mutual_info": "mutual_info_se",
    "marginal_kl": "marginal_kl_se",
}


class BaselineError(ValueError):
    """A baseline file is missing, unreadable or damaged; the message names it and the fix."""


@dataclass(frozen=True)
class Comparison:
    """One (model, metric) of the check."""

    model: str
    metric: str
    baseline: float
    now: float
    tolerance: float
    ok: bool
    note: str = ""


def baseline_rows(records: list[Record]) -> pd.DataFrame:
    """The baseline rows of ``records``: each checked metric with its Monte Carlo standard error."""
    rows = []
    for record in records:
        flat = record.to_flat()
        rows += [
            {
                "model": record.model,
                "metric": m,
                "value": flat[m],
                "se": flat[se],
                "k": record.k,
                "n_test": record.n_test,
                "checkpoint_sha256": record.checkpoint_sha256,
            }
            for m, se in CHECKED.items()
            if m in flat
        ]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_baseline(path: Path, records: list[Record]) -> int:
    """Write (or update) the baseline with ``records``' rows, keeping other models' rows; the row count."""
    rows = baseline_rows(records)
    if path.is_file():
        try:
            kept = read_baseline(path)
        except BaselineError as err:
            raise BaselineError(f"{err}. To make it anew from this run alone, delete {path} first") from None
        kept = kept[~kept.model.isin(rows.model)]
        other = sorted({(int(k), int(n)) for k, n in zip(kept.k, kept.n_test)} - set(zip(rows.k, rows.n_test)))
        if len(kept) and other:
            raise BaselineError(
                f"{path} holds other models' rows made with k, n_test = {other}, not this run's; "
                "update every model at once (check --update without names) or use another --baseline"
            )
        rows = pd.concat([kept, rows]).sort_values(["model", "metric"], kind="stable")
    atomic_write_text(path, rows.to_csv(index=False, float_format="%.6f"))
    return len(rows)


def read_baseline(path: Path) -> pd.DataFrame:
    """A baseline file, checked: its columns, at least one row, finite values and standard errors."""
    fix = "restore it with git, or make it again with `vaebench check --update`"
    if not path.is_file():
        raise BaselineError(f"no baseline at {path}: create it with `vaebench check --update`")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise BaselineError(f"{path} is not a readable baseline CSV ({type(err).__name__}); {fix}") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise BaselineError(f"{path} lacks the columns {', '.join(missing)}; {fix}")
    if frame.empty:
        raise BaselineError(f"{path} has no rows; {fix}")
    unknown = sorted(set(frame.metric) - set(CHECKED))
    if unknown:
        raise BaselineError(
            f"{path} names metrics it cannot check ({', '.join(map(str, unknown))}; known: {', '.join(CHECKED)}); {fix}"
        )
    names = frame["model"].astype("string").str.strip()
    if names.isna().any() or (names == "").any():
        raise BaselineError(
            f"{path}: line {int((names.isna() | (names == '')).to_numpy().argmax()) + 2} has no model name; {fix}"
        )
    numbers = frame[["value", "se", "k", "n_test"]].apply(pd.to_numeric, errors="coerce")
    for column, ok, what in (
        ("value", numbers["value"].map(math.isfinite), "a finite number"),
        ("se", numbers["se"].map(math.isfinite) & (numbers["se"] >= 0), "a finite standard error (>= 0)"),
        ("k", (numbers["k"] % 1 == 0) & (numbers["k"] >= 1), "a whole number of samples"),
        ("n_test", (numbers["n_test"] % 1 == 0) & (numbers["n_test"] >= 1), "a whole number of test points"),
    ):
        if not ok.all():
            row = frame[~ok.to_numpy()].iloc[0]
            shown = repr(row[column]) if isinstance(row[column], str) else str(row[column])
            raise BaselineError(f"{path}: {row.model} {row.metric}: {column} = {shown} is not {what}; {fix}")
    twice = frame[frame.duplicated(["model", "metric"], keep=False)]
    if len(twice):
        row = twice.iloc[0]
        raise BaselineError(f"{path}: {row.model} {row.metric} has {len(twice)} rows, expected one; {fix}")
    frame[["value", "se"]] = numbers[["value", "se"]]
    frame[["k", "n_test"]] = numbers[["k", "n_test"]].astype(int)
    return frame


def baseline_settings(baseline: pd.DataFrame, path: Path) -> tuple[int, int]:
    """The (k, n_test) the baseline was made with (one pair for the whole file)."""
    settings = baseline[["k", "n_test"]].drop_duplicates()
    if len(settings) != 1:
        raise BaselineError(
            f"{path} mixes settings {settings.values.tolist()} (k, n_test); make it again with "
            "`vaebench check --update`"
        )
    return int(settings.iloc[0].k), int(settings.iloc[0].n_test)


def compare(records: list[Record], baseline: pd.DataFrame, names: list[str] | None = None) -> list[Comparison]:
    """Every baseline row of the evaluated models (all of its models when ``names`` is None) against the
    current records. A baseline row with no current value fails, and so does a current metric with no baseline
    row (a damaged baseline, or a model never added to it with ``check --update``)."""
    now = {r.model: (r, r.to_flat()) for r in records}
    rows = []
    wanted = baseline if names is None else baseline[baseline.model.isin(names)]
    for b in wanted.itertuples():
        if b.model not in now or b.metric not in now[b.model][1]:
            rows.append(
                Comparison(
                    b.model,
                    b.metric,
                    b.value,
                    math.nan,
                    math.nan,
                    False,
                    "no current value (model not evaluated, checkpoint gone, or metric missing)",
                )
            )
            continue
        record, flat = now[b.model]
        se_now = flat[CHECKED[b.metric]]
        same = b.checkpoint_sha256 == record.checkpoint_sha256
        if same and 0 < se_now < math.inf and not se_now / SE_RATIO <= b.se <= se_now * SE_RATIO:
            raise BaselineError(
                f"the baseline's standard error of {b.model} {b.metric} is {b.se:.3g}, but this protocol gives "
                f"{se_now:.3g} for the same checkpoint and settings: the baseline is damaged; restore it with git, "
                "or make it again with `vaebench check --update`"
            )
        tolerance = Z_CHECK * math.hypot(b.se, se_now)
        diff = flat[b.metric] - b.value
        note = "" if same else "checkpoint changed: run `check --update` and commit"
        rows.append(
            Comparison(
                b.model, b.metric, b.value, flat[b.metric], tolerance, bool(same and abs(diff) <= tolerance), note
            )
        )
    known = set(zip(baseline.model, baseline.metric))
    for model, (_, flat) in now.items():
        rows += [
            Comparison(
                model,
                m,
                math.nan,
                flat[m],
                math.nan,
                False,
                f"not in the baseline: run `check --update {model}` and commit the baseline",
            )
            for m in CHECKED
            if m in flat and (model, m) not in known
        ]
    return rows
