"""The VAE evaluation suite. With no subcommand: evaluate every trained model, then write the report.

  list            the registry and which entries are trained
  train NAME      train (or resume training) one registry entry
  eval [NAMES]    full protocol (K=5000, whole test set) -> results/records, results/metrics.csv
  report          tables (results/tables.md) and plots (results/*.png) from stored results
  check           quick protocol on the committed checkpoints vs results/baseline.csv (CI)
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from bench.allocator import keep_freed_memory

ROOT = Path(__file__).resolve().parent.parent


class UsageError(ValueError):
    """Bad command-line input; the message says what to change."""


def code_version() -> str:
    """``git describe``-style id of the code: the commit, with ``-dirty`` for uncommitted changes to
    tracked files other than checkpoints and results (which training and evaluation themselves write)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)models/checkpoints", ":(exclude)results"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def source_hash() -> str:
    """SHA-256 (first 16 hex digits) of the project's Python source: every ``*.py`` under ``bench/`` and
    ``models/`` and ``run_bench.py``, by relative path and content. Identifies the code without git (a copied
    tree, an archive), where :func:`code_version` cannot."""
    digest = hashlib.sha256()
    files = sorted([*ROOT.glob("bench/**/*.py"), *ROOT.glob("models/**/*.py"), *ROOT.glob("run_bench.py")])
    for path in files:
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def resolve_device(name: str) -> torch.device:
    """A usable torch device from ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, or a :class:`UsageError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device name: use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"--device {name}: no such CUDA device here ({torch.cuda.device_count()} visible); "
                         "use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: only cpu and cuda are supported")
    return device


def resolve_backend(name: str, device: torch.device) -> str:
    """The log-weight backend if it can run on ``device``, else a :class:`UsageError` naming the fix."""
    from bench.kernels import triton_problem

    problem = triton_problem(device) if name == "triton" else None
    if problem is not None:
        raise UsageError(f"--backend triton cannot run here: {problem}; or use --backend torch")
    return name


def cmd_list(args: argparse.Namespace) -> int:
    from models.registry import ENTRIES

    print(f"{'name':24} {'dataset':16} {'prior':10} {'levels':6} {'objective':10} trained")
    for e in ENTRIES:
        trained = "yes" if e.checkpoint.is_file() else "no"
        objective = f"{e.train.objective}-k{e.train.k}"
        print(f"{e.name:24} {e.dataset:16} {e.model.prior:10} {e.model.levels:<6} {objective:10} {trained}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from models import registry
    from models.train import train

    entry = registry.get(args.name)
    device = resolve_device(args.device)
    data = entry.load_data(args.data_dir)
    model = registry.build(entry, data)
    meta = {"name": entry.name, "dataset": entry.dataset, "model": asdict(entry.model),
            "code_version": code_version(), "source_sha256": source_hash(), "data_sha256": registry.data_checksum(data),
            "torch": str(torch.__version__), "device": str(device)}
    st = train(model, data, entry.train, entry.state, entry.checkpoint, meta, args.max_epochs, str(device))
    status = "finished" if st["done"] else "paused (run the same command to continue)"
    print(f"{entry.name}: epoch {st['epoch']}, best validation ELBO {st['best']:.3f}, {status}")
    return 0


def _trained(names: list[str] | None) -> list:
    from models import registry

    entries = [registry.get(n) for n in names] if names else [e for e in registry.ENTRIES if e.checkpoint.is_file()]
    missing = [e.name for e in entries if not e.checkpoint.is_file()]
    if missing:
        raise UsageError(f"not trained: {', '.join(missing)}; run `python run_bench.py train NAME` first")
    return entries


def evaluate_entries(entries: list, args: argparse.Namespace, out: Path, *, k: int, n_test: int | None,
                     surgery_samples: int | None, reuse: bool, store: bool) -> list[dict]:
    """Run the protocol on each entry; ``reuse``: take stored records whose key is unchanged and
    keep per-batch progress for resuming; ``store``: write the records (rank 0 only)."""
    from bench.kernels import KEY_INDEX_BITS
    from bench.protocol import PROTOCOL_VERSION, distributed_rank_world, evaluate, rank_progress_path
    from bench.results import load_record, save_record
    from models import registry

    if k < 1:
        raise UsageError(f"--k {k}: the number of importance samples must be at least 1")
    for option, value, least in (("--seed", args.seed, 0), ("--batch-size", args.batch_size, 1),
                                 ("--chunk-size", args.chunk_size, 1), ("--surgery-samples", surgery_samples, 1)):
        if value is not None and value < least:
            raise UsageError(f"{option} {value}: must be at least {least}")
    max_seed = 2 ** (63 - KEY_INDEX_BITS)
    if args.seed >= max_seed:
        raise UsageError(f"--seed {args.seed}: use 0..{max_seed - 1} (CUDA sampling keys Philox with seed * 2**40 + "
                         "test index)")
    device = resolve_device(args.device)
    backend = resolve_backend(args.backend, device)
    records, datasets = [], {}
    for entry in entries:
        if (entry.dataset, entry.n_valid) not in datasets:
            datasets[entry.dataset, entry.n_valid] = entry.load_data(args.data_dir)
        data = datasets[entry.dataset, entry.n_valid]
        if n_test is not None and not 0 < n_test <= len(data.test):
            raise UsageError(f"--n-test {n_test}: {entry.name}'s test set ({entry.dataset}) has {len(data.test)} "
                             f"points; choose 1..{len(data.test)}")
        # Device and log-weight backend are recorded but not part of the key: they change rounding and,
        # between CPU and CUDA, which seeded samples are drawn, not what is estimated.
        key = {"checkpoint_sha256": registry.file_hash(entry.checkpoint), "protocol_version": PROTOCOL_VERSION,
               "k": k, "n_test": n_test or len(data.test), "seed": args.seed, "surgery_samples": surgery_samples,
               "data_sha256": registry.data_checksum(data)}
        cached = load_record(out, entry.name, key) if reuse else None
        if cached is not None:
            print(f"{entry.name}: unchanged, reusing the stored record (made on {cached.get('device', '?')} with "
                  f"the {cached.get('backend', '?')} backend; --force re-runs)")
            records.append(cached)
            continue
        model = registry.load(entry)
        progress = out / ".cache" / f"{entry.name}-{key['checkpoint_sha256'][:12]}-k{k}.progress.pt" if reuse else None
        record, per_example = evaluate(model, data, k, n_test=n_test, seed=args.seed, batch_size=args.batch_size,
                                       chunk_size=args.chunk_size, device=device, name=entry.name,
                                       surgery_samples=surgery_samples, progress_path=progress, backend=backend)
        record.update({"code_version": code_version(), "source_sha256": source_hash(),
                       "checkpoint_sha256": key["checkpoint_sha256"]})
        if store:
            save_record(out, entry.name, key, record, per_example)
        if progress is not None:
            if distributed_rank_world()[1] > 1:
                torch.distributed.barrier()  # rank 0 has stored the record
            rank_progress_path(progress).unlink(missing_ok=True)
        print(f"{entry.name}: log p(x) >= {record['log_likelihood']:.3f} ± {record['log_likelihood_se']:.3f} "
              f"(K={k}, n={record['n_test']}, {record['wall_time_s']:.1f} s)")
        records.append(record)
    return records


def init_distributed(args: argparse.Namespace) -> int:
    """Join the ``torchrun`` process group (gloo on CPU, NCCL on CUDA) when WORLD_SIZE > 1; the rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    cuda = resolve_device(args.device).type == "cuda"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return torch.distributed.get_rank()


def cmd_eval(args: argparse.Namespace) -> int:
    from bench.results import all_records, check_writable, write_metrics_csv

    out = Path(args.out)
    rank = init_distributed(args)
    if rank == 0:
        check_writable(out)
    evaluate_entries(_trained(args.names), args, out, k=args.k, n_test=args.n_test,
                     surgery_samples=args.surgery_samples, reuse=not args.force, store=rank == 0)
    if rank == 0:
        print(f"wrote {write_metrics_csv(out, all_records(out))}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import image_grids, plot_posterior_2d, write_plots, write_tables
    from bench.results import all_records, check_writable, write_metrics_csv
    from models import registry

    out = Path(args.out)
    check_writable(out)
    records = all_records(out)
    if records.empty:
        raise UsageError(f"no stored results under {out}/records: run `python run_bench.py eval` first")
    current = [name not in registry.REGISTRY or not registry.REGISTRY[name].checkpoint.is_file()
               or registry.file_hash(registry.REGISTRY[name].checkpoint) == sha
               for name, sha in zip(records.model, records.checkpoint_sha256)]
    for name in records.model[[not c for c in current]]:
        print(f"{name}: left out, its checkpoint changed since it was evaluated; run `python run_bench.py eval {name}`")
    records = records[current].reset_index(drop=True)
    write_metrics_csv(out, records)
    write_tables(records, registry.REGISTRY, out)
    write_plots(records, registry.REGISTRY, out)
    for name in records.model:
        entry = registry.REGISTRY.get(name)
        if entry is None or not entry.checkpoint.is_file():
            continue
        model, data = registry.load(entry), entry.load_data(args.data_dir)
        image_grids(name, model, data, out)
        if entry.model.z_dim == 2 and entry.model.levels == 1:
            plot_posterior_2d(name, model, data, out)
    print(f"wrote {out}/metrics.csv, {out}/tables.md and plots")
    return 0


CHECKED = {"log_likelihood": "log_likelihood_mc_se", "L_1": "L_1_mc_se", "mutual_info": "mutual_info_se",
           "marginal_kl": "marginal_kl_se"}
Z_CHECK = 4.0


def compare_with_baseline(records: list[dict], baseline: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, metric): baseline, now, difference and tolerance Z * sqrt(se_b^2 + se_now^2),
    with Monte Carlo standard errors of these fixed test points; ``ok`` False where it moved more, or
    where the checkpoint differs from the one the baseline was made with."""
    rows = []
    for rec in records:
        base = baseline[baseline.model == rec["model"]]
        for metric, se_key in CHECKED.items():
            row = base[base.metric == metric]
            if metric not in rec:
                if not row.empty:
                    rows.append({"model": rec["model"], "metric": metric, "baseline": row.iloc[0].value, "ok": False,
                                 "note": "missing now"})
                continue
            if row.empty:
                rows.append({"model": rec["model"], "metric": metric, "now": rec[metric], "ok": True, "note": "new"})
                continue
            b = row.iloc[0]
            tol = Z_CHECK * math.hypot(b.se, rec[se_key])
            same = b.checkpoint_sha256 == rec["checkpoint_sha256"]
            diff = rec[metric] - b.value
            rows.append({"model": rec["model"], "metric": metric, "baseline": b.value, "now": rec[metric],
                         "diff": diff, "tolerance": tol, "ok": bool(same and abs(diff) <= tol),
                         "note": "" if same else "checkpoint changed: run `check --update` and commit"})
    return pd.DataFrame(rows)


def cmd_check(args: argparse.Namespace) -> int:
    from bench.files import atomic_write_text

    records = evaluate_entries(_trained(args.names), args, Path(args.out),
                               k=args.k, n_test=args.n_test, surgery_samples=args.surgery_samples, reuse=False,
                               store=False)
    baseline_path = Path(args.baseline)
    if args.update:
        rows = pd.DataFrame([{"model": r["model"], "metric": m, "value": r[m], "se": r[se], "k": r["k"],
                              "n_test": r["n_test"], "checkpoint_sha256": r["checkpoint_sha256"]}
                             for r in records for m, se in CHECKED.items() if m in r])
        if baseline_path.is_file():  # keep the rows of models not evaluated now
            kept = pd.read_csv(baseline_path)
            rows = pd.concat([kept[~kept.model.isin(rows.model)], rows]).sort_values(["model", "metric"], kind="stable")
        atomic_write_text(baseline_path, rows.to_csv(index=False, float_format="%.6f"))
        print(f"wrote {baseline_path} ({len(rows)} rows)")
        return 0
    if not baseline_path.is_file():
        raise UsageError(f"no baseline at {baseline_path}: create it with `python run_bench.py check --update`")
    baseline = pd.read_csv(baseline_path)
    settings = baseline[["k", "n_test"]].drop_duplicates()
    if len(settings) != 1 or (settings.iloc[0].k, settings.iloc[0].n_test) != (args.k, args.n_test):
        raise UsageError(f"the baseline was made with k, n_test = {settings.values.tolist()}, not "
                         f"{args.k}, {args.n_test}: run check with those settings, or --update")
    table = compare_with_baseline(records, baseline)
    missing = [] if args.names else sorted(set(baseline.model) - {r["model"] for r in records})
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if missing:
        print(f"in the baseline but not evaluated (checkpoint gone?): {', '.join(missing)}")
    failed = table[~table.ok]
    print(f"check: {len(table) - len(failed)} of {len(table)} metrics within tolerance "
          f"({Z_CHECK:g} Monte Carlo standard errors)")
    return 1 if len(failed) or missing else 0


def cmd_all(args: argparse.Namespace) -> int:
    cmd_eval(args)
    return cmd_report(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # accepted before or after the subcommand: the subcommands' copies only override when given
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for q in (p, common):
        q.add_argument("--data-dir", help="dataset directory (default: $VAEBENCH_DATA or ~/.cache/vaebench/data)")
        q.add_argument("--device", help="auto, cpu or cuda[:N] (default auto)")
    p.set_defaults(data_dir=None, device="auto")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("list", help="the registry and which entries are trained",
                   parents=[common]).set_defaults(func=cmd_list)
    t = sub.add_parser("train", help="train or resume one registry entry", parents=[common])
    t.add_argument("name")
    t.add_argument("--max-epochs", type=int, help="stop this run after this many more epochs (resume later)")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="full protocol on trained models (default: all) -> results/", parents=[common])
    e.add_argument("names", nargs="*", help="registry names (default: every trained model)")
    _protocol_options(e, k=5000)
    e.add_argument("--force", action="store_true", help="re-evaluate even if a stored record matches")
    e.set_defaults(func=cmd_eval)
    r = sub.add_parser("report", help="tables and plots from stored results", parents=[common])
    r.add_argument("--out", default=str(ROOT / "results"), help="results folder (default results/)")
    r.set_defaults(func=cmd_report)
    c = sub.add_parser("check", help="quick protocol on committed checkpoints vs results/baseline.csv",
                       parents=[common])
    c.add_argument("names", nargs="*", help="registry names (default: every trained model)")
    _protocol_options(c, k=100, n_test=200, surgery_samples=1000, out=False)
    c.add_argument("--baseline", default=str(ROOT / "results" / "baseline.csv"))
    c.add_argument("--update", action="store_true", help="write the baseline instead of comparing")
    c.set_defaults(func=cmd_check)
    p.set_defaults(func=cmd_all, names=[], force=False, **{k: v for k, v in _PROTOCOL_DEFAULTS.items()})
    return p


_PROTOCOL_DEFAULTS = {"k": 5000, "n_test": None, "batch_size": 100, "chunk_size": None, "seed": 0, "backend": "torch",
                      "surgery_samples": None, "out": str(ROOT / "results")}


def _protocol_options(p: argparse.ArgumentParser, k: int, n_test: int | None = None,
                      surgery_samples: int | None = None, out: bool = True) -> None:
    p.add_argument("--k", type=int, default=k, help=f"importance samples (default {k})")
    p.add_argument("--n-test", type=int, default=n_test,
                   help="a fixed random sample of N test points, the same for every model (default: all)")
    p.add_argument("--batch-size", type=int, default=100, help="test points per batch (default 100)")
    p.add_argument("--chunk-size", type=int, help="samples per chunk (default: what fits a quarter of free GPU "
                                                  "memory or 64 MiB on the CPU, rounded to a multiple of 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the importance samples (default 0)")
    p.add_argument("--backend", default="torch", choices=("torch", "triton"),
                   help="log-weight path: torch (default; the fastest measured on the CPU and on an H200) or the "
                        "fused Triton kernels, which never materialise the [K, B, D] logits")
    p.add_argument("--surgery-samples", type=int, default=surgery_samples,
                   help="draws from q(z) for the ELBO-surgery expectations (default: one per training point)")
    if out:
        p.add_argument("--out", default=str(ROOT / "results"), help="results folder (default results/)")


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    keep_freed_memory()
    from bench.data import DataError
    from bench.results import ResultsError
    from models.checkpoint import CheckpointError
    from models.registry import UnknownModelError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command to resume", file=sys.stderr)
        return 130
    except (UsageError, DataError, CheckpointError, ResultsError, UnknownModelError, PermissionError,
            FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
