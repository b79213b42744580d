"""Evaluate registry entries under the protocol, reusing stored records and resuming interrupted runs.

Each entry's record is keyed by everything that fixes its numbers (:func:`record_key`); a stored record
with the same key is reused, and a run in progress keeps one progress file per entry, keyed the same way
plus the code, so a resumed run gives exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path

import torch

from vaebench.core.kernels import triton_problem
from vaebench.protocol import registry
from vaebench.protocol.datasets import DataError, Dataset
from vaebench.protocol.evaluate import distributed_rank_world, evaluate, rank_progress_path
from vaebench.protocol.provenance import code_version, source_hash
from vaebench.protocol.record import Record
from vaebench.protocol.registry import Entry, RegistryError
from vaebench.protocol.results import check_replaceable, load_record, save_record
from vaebench.protocol.settings import Settings, SettingsError


def resolve_device(name: str) -> torch.device:
    """A usable torch device from ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, or a :class:`SettingsError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SettingsError(f"--device {name!r} is not a device name: use auto, cpu or cuda[:N]") from None
    if device.type not in ("cpu", "cuda"):
        raise SettingsError(f"--device {name}: only cpu and cuda are supported")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise SettingsError(
            f"--device {name}: no such CUDA device here ({torch.cuda.device_count()} visible); use --device cpu"
        )
    return device


def init_distributed(device: str) -> str:
    """Join the ``torchrun`` process group (gloo on CPU, NCCL on CUDA) when WORLD_SIZE > 1; the device this
    process uses (its own GPU under NCCL)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    cuda = resolve_device(device).type == "cuda"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return device


def check_backend(settings: Settings, device: torch.device) -> None:
    """Raise :class:`SettingsError` naming the fix when the backend cannot run on ``device``."""
    problem = triton_problem(device) if settings.backend == "triton" else None
    if problem is not None:
        raise SettingsError(f"--backend triton cannot run here: {problem}; or use --backend torch")


def record_key(entry: Entry, data: Dataset, settings: Settings) -> dict:
    """What fixes an entry's numbers: checkpoint, model code (factories), data, protocol version and settings.
    Device and backend are recorded but not keyed: they change rounding and which seeded samples are drawn
    between CPU and CUDA, not what is estimated."""
    return {
        "checkpoint_sha256": registry.file_hash(entry.checkpoint),
        **registry.model_key(entry),
        **settings.key(len(data.test)),
        "data_sha256": registry.data_checksum(data),
    }


def check_trained(entries: list[Entry]) -> None:
    missing = [f"{e.name} (no {e.checkpoint})" for e in entries if not e.trained]
    if missing:
        raise SettingsError(f"not trained: {', '.join(missing)}; run `vaebench train NAME` first")


def _evaluate_model(
    entry: Entry,
    model: object,
    data: Dataset,
    settings: Settings,
    device: torch.device,
    progress: Path | None,
    fingerprint: str,
) -> tuple[Record, dict]:
    """The protocol on one entry's model. A model from a factory (the user's code) that fails is named in one
    :class:`~vaebench.protocol.registry.RegistryError`; the built-in families' failures are bugs and propagate."""
    try:
        return evaluate(
            model, data, settings, device=device, name=entry.name, progress_path=progress, fingerprint=fingerprint
        )
    except (KeyboardInterrupt, DataError, FloatingPointError, SettingsError):
        raise
    except (Exception, SystemExit) as err:  # a factory model's code may also call sys.exit
        if entry.factory is None:
            raise
        message = str(err).splitlines()[0][:300] if str(err) else ""
        raise RegistryError(
            f"model {entry.name} ({entry.factory}) failed during evaluation ({type(err).__name__}: {message}); "
            "check that posterior(x), prior() and likelihood(z) return torch.distributions with batch shape [B] "
            "and event shapes [d] and [D]"
        ) from None


def evaluate_entries(
    entries: list[Entry],
    settings: Settings,
    out: Path,
    *,
    device: str = "auto",
    data_dir: str | os.PathLike | None = None,
    reuse: bool = True,
    store: bool = True,
    force: bool = False,
    say=print,
) -> list[Record]:
    """Run the protocol on each entry. ``reuse``: take stored records whose key is unchanged and keep
    per-batch progress for resuming; ``store``: write the records (rank 0 of a ``torchrun`` group only);
    ``force``: replace a stored record made with other settings (refused otherwise)."""
    check_trained(entries)
    torch_device = resolve_device(device)
    check_backend(settings, torch_device)
    rank, world = distributed_rank_world()
    records, datasets = [], {}
    for entry in entries:
        if (entry.dataset, entry.n_valid) not in datasets:
            datasets[entry.dataset, entry.n_valid] = entry.load_data(data_dir)
        data = datasets[entry.dataset, entry.n_valid]
        registry.check_fits(entry, data)
        if settings.n_test is not None and settings.n_test > len(data.test):
            raise SettingsError(
                f"--n-test {settings.n_test}: {entry.name}'s test set ({entry.dataset}) has "
                f"{len(data.test)} points; choose 1..{len(data.test)}"
            )
        key = record_key(entry, data, settings)
        cached = load_record(out, entry.name, key) if reuse else None
        if cached is not None:
            say(
                f"{entry.name}: unchanged, reusing the stored record (made on {cached.device} with the "
                f"{cached.backend} backend; --force re-runs)"
            )
            records.append(cached)
            continue
        if store and not force:
            check_replaceable(out, entry.name, key, same_model=entry.one_off)
        model = registry.load(entry)
        code = source_hash()
        # kept whenever results are stored (--force too): an interrupted run resumes from its last batch
        progress = out / ".cache" / f"{entry.name}-{key['checkpoint_sha256'][:12]}-k{settings.k}.progress.pt"
        progress = progress if store else None
        fingerprint = f"{sorted(key.items())}|{code}"
        record, per_example = _evaluate_model(entry, model, data, settings, torch_device, progress, fingerprint)
        record = replace(
            record, code_version=code_version(), source_sha256=code, checkpoint_sha256=key["checkpoint_sha256"]
        )
        if store and rank == 0:
            save_record(out, entry.name, key, record, per_example, force=force, same_model=entry.one_off)
        if progress is not None:
            if world > 1:
                torch.distributed.barrier()  # rank 0 has stored the record
            with contextlib.suppress(OSError):  # a progress folder that could not be written holds nothing
                rank_progress_path(progress).unlink(missing_ok=True)
        say(
            f"{entry.name}: log p(x) >= {record.log_likelihood:.3f} ± {record.log_likelihood_se:.3f} "
            f"(K={settings.k}, n={record.n_test}, {record.wall_time_s:.1f} s)"
        )
        records.append(record)
    return records
