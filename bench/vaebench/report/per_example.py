"""The stored per-test-point values (``per_example/NAME.csv.gz``: test_index, L_<K>, elbo), read with checks, and
what the report estimates from them."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from vaebench.protocol.record import Record
from vaebench.protocol.results import ResultsError, per_example_matches, per_example_path, record_path
from vaebench.protocol.settings import SURGERY_SAMPLES


def rerun_command(name: str, record: Record | None = None, out: Path | None = None) -> str:
    """The command that rewrites ``name``'s stored files in ``out`` with the settings of its record. ``--force``: a
    stored record with an unchanged key is otherwise reused, and its per-example file left as it is."""
    parts = ["vaebench", "eval", name, "--force", "--out", str(out if out is not None else "results")]
    if record is not None:
        parts += ["--k", str(record.k), "--n-test", str(record.n_test)]
        if record.seed != 0:
            parts += ["--seed", str(record.seed)]
        if record.surgery is not None and record.surgery.surgery_samples != SURGERY_SAMPLES:
            parts += ["--surgery-samples", str(record.surgery.surgery_samples)]
    return " ".join(parts)


def read_per_example(out: Path, name: str, record: Record | None = None, need_elbo: bool = False) -> pd.DataFrame:
    """``name``'s per-test-point values, indexed by ``test_index``: the column ``L_<K>`` (and ``elbo``). A missing,
    truncated, empty or column-less file, non-numeric or repeated values, or (with ``record``) a file that does not
    match its record raise :class:`ResultsError` naming the file and the fix."""
    path = per_example_path(out, name)
    fix = f"delete it and run `{rerun_command(name, record, out)}` again"
    if not path.is_file():
        raise ResultsError(
            f"{path} is missing ({name} has no per-test-point values); run `{rerun_command(name, record, out)}`"
        )

    def damaged(why: str) -> ResultsError:
        return ResultsError(f"{path} is damaged ({why}); {fix}")

    try:
        frame = pd.read_csv(path, compression="infer")
    except pd.errors.EmptyDataError:
        raise damaged("empty: no header, no rows") from None
    except EOFError:
        raise damaged("truncated: the compressed data ends early") from None
    except (OSError, zlib.error, UnicodeDecodeError, pd.errors.ParserError, ValueError) as err:
        raise damaged(f"unreadable: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    bounds = [c for c in frame.columns if isinstance(c, str) and c.startswith("L_") and c[2:].isdigit()]
    absent = [
        c
        for c, there in (
            ("test_index", "test_index" in frame.columns),
            ("L_<K>", bool(bounds)),
            ("elbo", "elbo" in frame.columns or not need_elbo),
        )
        if not there
    ]
    if absent:
        raise damaged(f"no column {', '.join(absent)}; it has {', '.join(map(str, frame.columns)) or 'no columns'}")
    if len(bounds) > 1:
        raise damaged(f"several bound columns {', '.join(bounds)}")
    if frame.empty:
        raise damaged("a header without rows")
    frame = frame[["test_index", bounds[0], *(["elbo"] if need_elbo else [])]]
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().to_numpy().nonzero()
    if len(bad[0]):
        row, column = int(bad[0][0]), frame.columns[bad[1][0]]
        raise damaged(f"line {row + 2}, column {column}: {frame[column].iloc[row]!r} is not a number")
    infinite = (~np.isfinite(numeric.to_numpy())).nonzero()
    if len(infinite[0]):
        row, column = int(infinite[0][0]), frame.columns[infinite[1][0]]
        raise damaged(f"line {row + 2}, column {column}: {frame[column].iloc[row]!r} is not a finite number")
    if (numeric["test_index"] % 1 != 0).any() or (numeric["test_index"] < 0).any():
        raise damaged("test_index holds values that are not test-point indices (whole numbers >= 0)")
    numeric["test_index"] = numeric["test_index"].astype("int64")
    if numeric["test_index"].duplicated().any():
        raise damaged(
            f"test point {int(numeric['test_index'][numeric['test_index'].duplicated()].iloc[0])} appears twice"
        )
    if record is not None:
        if bounds[0] != f"L_{record.k}":
            raise damaged(f"it holds {bounds[0]}, but the record was made with K = {record.k}")
        if len(numeric) != record.n_test:
            raise damaged(f"{len(numeric)} test points, but the record says {record.n_test}")
    if record_path(out, name).is_file() and not per_example_matches(out, name):
        raise damaged(
            f"it is not the file written with {record_path(out, name)}: another run replaced it, or a run was "
            "stopped between writing the two"
        )
    return numeric.set_index("test_index")


def load_per_example(
    records: pd.DataFrame, out: Path, records_by_name: dict[str, Record] | None = None
) -> dict[str, tuple[str | None, pd.Series]]:
    """L_K per test point of every recorded model with a stored per-example file: {model: (dataset or None, L_K
    indexed by test_index)}. A model without a file is left out; a damaged file is a :class:`ResultsError`."""
    values = {}
    for r in records.itertuples():
        if not per_example_path(out, r.model).is_file():
            continue
        frame = read_per_example(out, r.model, (records_by_name or {}).get(r.model))
        values[r.model] = (getattr(r, "dataset", None), frame.iloc[:, 0])
    return values


def whole_test_estimates(values: dict[str, tuple[str | None, pd.Series]]) -> dict[str, tuple[float, float, str]]:
    """For each model evaluated on a test subset of n of N points, its mean L_K over all N, estimated with a
    control variate: a model of the same dataset evaluated on all N points (same K),

        mean_N(ref) + mean_n(L - L_ref),  s.e. = sd_n(L - L_ref) / sqrt(n) * sqrt(1 - n / N)

    (the subset is a random sample without replacement). Of several references, the one with the smallest s.e.
    ``values``: :func:`load_per_example`. Returns {model: (estimate, s.e., reference)}."""
    estimates = {}
    for model, (dataset, bounds) in values.items():
        best = None
        for ref, (ref_dataset, ref_bounds) in values.items():
            if (
                ref_dataset != dataset
                or bounds.name != ref_bounds.name
                or len(ref_bounds) <= len(bounds)
                or not bounds.index.isin(ref_bounds.index).all()
            ):
                continue
            n, total = len(bounds), len(ref_bounds)
            diff = bounds - ref_bounds.loc[bounds.index]
            se = diff.std() / math.sqrt(n) * math.sqrt(1 - n / total)
            if best is None or se < best[1]:
                best = (ref_bounds.mean() + diff.mean(), se, ref)
        if best is not None:
            estimates[model] = best
    return estimates
