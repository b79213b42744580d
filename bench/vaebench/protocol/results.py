"""Stored evaluation results: one JSON record per model, assembled into ``metrics.csv``.

A record is reused while its key (checkpoint, data, protocol version and settings) is unchanged, so a
repeated run only evaluates what changed. Every file is written to a temporary name in the same folder
and renamed (readers skip the temporary names), so an interrupted run leaves the previous results
intact; ``metrics.csv`` is rebuilt under a lock, so concurrent runs do not drop each other's rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch

from vaebench.protocol.files import atomic_path, atomic_write_text, is_temporary
from vaebench.protocol.record import Record, RecordError

SETTING_KEYS = ("k", "n_test", "seed", "surgery_samples")


class ResultsError(RuntimeError):
    """A stored result file is unreadable or would be overwritten by accident; the message names it."""


def check_writable(folder: Path) -> None:
    """Raise :class:`ResultsError` naming the folder unless files can be created in ``folder`` and in the
    sub-folders results are written to (asked before any evaluation runs, not after)."""
    for sub in (folder, folder / "records", folder / "per_example"):
        if sub.exists() and not sub.is_dir():
            raise ResultsError(f"{sub} is a file, not a folder: move it away, or choose another folder with --out")
        if sub != folder and not sub.exists():
            continue  # made when the first result is written (its parent was found writable)
        try:
            sub.mkdir(parents=True, exist_ok=True)
            probe = sub / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise ResultsError(
                f"output folder {sub} cannot be written ({err.strerror}); choose another with --out"
            ) from None


def record_path(out: Path, name: str) -> Path:
    return out / "records" / f"{name}.json"


def per_example_path(out: Path, name: str) -> Path:
    return out / "per_example" / f"{name}.csv.gz"


def read_record(path: Path) -> tuple[dict, Record]:
    """(key, record) of a stored record file; a :class:`ResultsError` naming it when damaged."""
    fix = "delete it (or restore it with git) and run `vaebench eval` again"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(stored, dict) or not isinstance(stored.get("key"), dict):
            raise RecordError("no 'key' object")
        record = Record.from_flat(stored.get("record"))
        if "record_sha256" in stored and stored["record_sha256"] != _record_digest(stored["key"], stored.get("record")):
            raise RecordError("its numbers were edited or damaged after it was written (checksum)")
        return stored["key"], record
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecordError) as err:
        raise ResultsError(f"{path} is not a readable record ({type(err).__name__}: {err}); {fix}") from None


def _record_digest(key: dict, flat: object) -> str:
    """sha256 of a record file's key and numbers as JSON: a record edited by hand (or damaged) is told apart."""
    return hashlib.sha256(json.dumps([key, flat], sort_keys=True).encode()).hexdigest()


def load_record(out: Path, name: str, key: dict) -> Record | None:
    """The stored record of ``name`` if it was made with exactly ``key`` and its per-example file is the one
    written with it (:func:`per_example_matches`), else None."""
    path = record_path(out, name)
    if not path.is_file():
        return None
    stored_key, record = read_record(path)
    return record if stored_key == key and per_example_matches(out, name) else None


def per_example_matches(out: Path, name: str) -> bool:
    """Whether ``name``'s per-example file is the one its record was written with: the record file holds the
    sha256 of the per-example file's bytes (records made before that, without it, are taken as matching)."""
    try:
        stored = json.loads(record_path(out, name).read_text(encoding="utf-8"))
        want = stored.get("per_example_sha256") if isinstance(stored, dict) else None
        if want is None:
            return True
        return hashlib.sha256(per_example_path(out, name).read_bytes()).hexdigest() == want
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def check_replaceable(out: Path, name: str, key: dict, same_model: bool = False) -> None:
    """Refuse to replace a stored record made with other settings (k, n_test, seed, surgery draws): a quick
    run must not overwrite a full one by accident. With ``same_model`` (a one-off model, whose name is only a
    label), also refuse one made from another checkpoint or model code."""
    path = record_path(out, name)
    if not path.is_file():
        return
    stored_key, _ = read_record(path)
    keys = SETTING_KEYS + (("checkpoint_sha256", "factory_sha256") if same_model else ())
    changed = [f"{k}={stored_key.get(k)} (now {key.get(k)})" for k in keys if stored_key.get(k) != key.get(k)]
    if changed:
        raise ResultsError(
            f"{path} holds {name}'s record made with {', '.join(changed)}; write this run elsewhere "
            "with --out DIR, or replace it with --force"
        )


def _gzip_csv(frame: pd.DataFrame) -> bytes:
    """The frame as gzipped CSV with a fixed header (no file name, time 0): equal frames, equal bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
        gz.write(frame.to_csv(float_format="%.6f").encode())
    return buffer.getvalue()


def save_record(
    out: Path,
    name: str,
    key: dict,
    record: Record,
    per_example: dict[str, torch.Tensor],
    *,
    force: bool = True,
    same_model: bool = False,
) -> None:
    """Store a record (JSON) and its per-example values (gzipped CSV), each atomically, the record last and
    holding the per-example file's sha256 (a run stopped between the two leaves a pair that does not match:
    not reused, and named when read). Under :func:`locked`; without ``force``, :func:`check_replaceable` is
    asked again there, so a concurrent run cannot replace a record made with other settings."""
    frame = pd.DataFrame(
        {k: v.double().numpy() if v.is_floating_point() else v.numpy() for k, v in per_example.items()}
    ).set_index("test_index")
    blob = _gzip_csv(frame)
    flat = record.to_flat()
    try:
        Record.from_flat(json.loads(json.dumps(flat)))
    except RecordError as err:
        raise ResultsError(
            f"{name}'s evaluation gave numbers that cannot be a record ({err}); nothing was written: delete "
            f"{out / '.cache'} (a damaged progress file?) and run again"
        ) from None
    stored = {
        "key": key,
        "record": flat,
        "per_example_sha256": hashlib.sha256(blob).hexdigest(),
        "record_sha256": _record_digest(key, flat),
    }
    try:
        with locked(out):
            if not force:
                check_replaceable(out, name, key, same_model)
            with atomic_path(per_example_path(out, name)) as tmp:
                tmp.write_bytes(blob)
            atomic_write_text(record_path(out, name), json.dumps(stored, indent=1) + "\n")
    except OSError as err:
        raise ResultsError(
            f"could not write {name}'s results under {out} ({err.strerror or err}); the previous "
            "files are intact: free space or choose another folder with --out"
        ) from None


def record_files(out: Path) -> list[Path]:
    """The stored record files, without temporary files and anything that is not a plain file."""
    return [p for p in sorted((out / "records").glob("*.json")) if p.is_file() and not is_temporary(p)]


def all_records(out: Path) -> list[Record]:
    """Every stored record, in name order. A record whose file is named after another model (a copied file,
    which would count that model twice) is a :class:`ResultsError` naming it."""
    records = []
    for path in record_files(out):
        record = read_record(path)[1]
        if record.model != path.stem:
            raise ResultsError(
                f"{path} holds the record of {record.model!r}, not of {path.stem!r} (a copied or renamed file "
                f"would count {record.model!r} twice): delete it, or run `vaebench eval {path.stem}` to make its own"
            )
        records.append(record)
    return records


def records_frame(records: list[Record]) -> pd.DataFrame:
    """Records as one tidy frame, a row per model (the ``metrics.csv`` columns)."""
    return pd.DataFrame([r.to_flat() for r in records])


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` exclusively: one process at a time rebuilds the files made from all records."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_metrics_csv(out: Path, records: list[Record] | None = None) -> Path:
    """``metrics.csv``: one row per model, every protocol number, written atomically; by default from every
    stored record, read and written under :func:`locked`."""
    path = out / "metrics.csv"
    with locked(out):
        frame = records_frame(all_records(out) if records is None else records)
        try:
            atomic_write_text(path, frame.to_csv(index=False, float_format="%.6f"))
        except OSError as err:
            raise ResultsError(
                f"could not write {path} ({err.strerror or err}); the previous file is intact: "
                "free space or choose another folder with --out"
            ) from None
    return path
