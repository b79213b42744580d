"""The command line: parse, call the library, print. With no subcommand: eval, then report.

list                 the registry (built-in and --registry folders) and which entries are trained
train NAME           train (or resume training) one registry entry
eval [NAMES]         full protocol (K=5000, whole test set) -> results/records, results/metrics.csv
compare A B [...]    paired differences of models of one dataset over their shared test points
report               tables (results/tables.md) and plots (results/*.png) from stored results
check [NAMES]        quick protocol vs a baseline file (CI); exit 1 on a regression
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

import torch

from vaebench.core.estimators import BACKENDS
from vaebench.protocol import registry
from vaebench.protocol.allocator import keep_freed_memory
from vaebench.protocol.baseline import Z_CHECK, BaselineError, baseline_settings, compare, read_baseline, write_baseline
from vaebench.protocol.checkpoint import CheckpointError
from vaebench.protocol.datasets import DATASETS, DataError
from vaebench.protocol.registry import Entry, RegistryError, UnknownModelError
from vaebench.protocol.results import ResultsError, write_metrics_csv
from vaebench.protocol.settings import SURGERY_SAMPLES, Settings, SettingsError

ERRORS = (
    SettingsError,
    DataError,
    CheckpointError,
    ResultsError,
    RegistryError,
    UnknownModelError,
    BaselineError,
    FloatingPointError,
)
EVAL_DEFAULTS = {"k": 5000, "n_test": None, "surgery_samples": SURGERY_SAMPLES}
CHECK_DEFAULTS = {"k": 100, "n_test": 200, "surgery_samples": 1000}


def _registry(args: argparse.Namespace) -> dict[str, Entry]:
    return registry.load_registry(registry.registry_dirs(args.registry or ()))


def _one_off(args: argparse.Namespace) -> Entry | None:
    """The entry of ``--model SPEC --checkpoint FILE --dataset NAME [--name NAME]``, or None without --model."""
    given = {o: getattr(args, o.replace("-", "_"), None) for o in ("model", "checkpoint", "dataset", "name")}
    if given["model"] is None:
        stray = [f"--{o}" for o in ("checkpoint", "dataset", "name") if given[o] is not None]
        if stray:
            raise SettingsError(f"{', '.join(stray)} go with --model FILE.py:FUNCTION (a one-off model)")
        return None
    if given["checkpoint"] is None or given["dataset"] is None:
        raise SettingsError("a one-off model needs --model FILE.py:FUNCTION --checkpoint FILE --dataset NAME")
    if given["dataset"] not in DATASETS:
        raise SettingsError(f"--dataset {given['dataset']!r}: unknown; known: {', '.join(DATASETS)}")
    checkpoint = Path(given["checkpoint"]).resolve()
    if not checkpoint.is_file():
        raise SettingsError(f"--checkpoint {given['checkpoint']}: no such file")
    # a checkpoint called checkpoint.pt (an entry folder's) is named after its folder
    name = given["name"] or (checkpoint.parent.name if checkpoint.stem == "checkpoint" else checkpoint.stem)
    if not registry.valid_name(name):
        raise SettingsError(
            f"--name {name!r}: use a printable name of at most 100 bytes (UTF-8), without spaces or slashes"
        )
    if name in _registry(args):
        raise SettingsError(f"--name {name}: a registry entry has that name; choose another for the one-off model")
    return Entry(
        name=name,
        dataset=given["dataset"],
        source=Path.cwd() / "(command line)",
        checkpoint=checkpoint,
        factory=given["model"],
        one_off=True,
    )


def _entries(args: argparse.Namespace) -> list[Entry]:
    """The entries a command runs on: a one-off model, the named entries, or every trained entry."""
    one_off = _one_off(args)
    if one_off is not None:
        if args.names:
            raise SettingsError("give either registry names or a one-off --model, not both")
        return [one_off]
    entries = _registry(args)
    if args.names:
        return [registry.get(entries, n) for n in dict.fromkeys(args.names)]
    return [e for e in entries.values() if e.trained]


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(
        k=args.k,
        n_test=args.n_test,
        seed=args.seed,
        surgery_samples=args.surgery_samples,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        backend=args.backend,
    )


def cmd_list(args: argparse.Namespace) -> int:
    print(f"{'name':24} {'dataset':20} {'model':46} {'trained':7} entry")
    for e in _registry(args).values():
        model = e.factory
        if e.model is not None:
            model = f"vae {e.model.prior}, {e.model.levels} level(s), {e.model.likelihood}"
            model += ", PixelCNN" if e.model.decoder == "pixelcnn" else ""
            model += ", IWAE chain" if e.model.hierarchy == "iwae" else ""
        print(f"{e.name:24} {e.dataset:20} {model:46} {'yes' if e.trained else 'no':7} {e.source}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vaebench.protocol.provenance import code_version, source_hash
    from vaebench.protocol.runner import resolve_device
    from vaebench.protocol.train import train

    entry = registry.get(_registry(args), args.name)
    if args.max_epochs is not None and args.max_epochs < 1:
        raise SettingsError(f"--max-epochs {args.max_epochs}: train at least one epoch")
    if entry.train is None or entry.model is None:
        raise SettingsError(
            f"{entry.name} ({entry.source}) has no [train] settings for a built-in family: "
            "train it with its own code, then evaluate its checkpoint"
        )
    device = resolve_device(args.device)
    data = entry.load_data(args.data_dir)
    registry.check_fits(entry, data)
    meta = {
        "name": entry.name,
        "dataset": entry.dataset,
        "model": asdict(entry.model),
        "code_version": code_version(),
        "source_sha256": source_hash(),
        "data_sha256": registry.data_checksum(data),
        "torch": str(torch.__version__),
        "device": str(device),
    }
    st = train(
        lambda: registry.build(entry, data),
        data,
        entry.train,
        entry.state,
        entry.checkpoint,
        meta,
        args.max_epochs,
        str(device),
    )
    status = "finished" if st["done"] else "paused (run the same command to continue)"
    print(f"{entry.name}: epoch {st['epoch']}, best validation ELBO {st['best']:.3f}, {status}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vaebench.protocol.evaluate import distributed_rank_world
    from vaebench.protocol.results import check_writable
    from vaebench.protocol.runner import evaluate_entries, init_distributed

    out = Path(args.out)
    entries, settings = _entries(args), _settings(args)
    device = init_distributed(args.device)
    rank = distributed_rank_world()[0]
    if rank == 0:
        check_writable(out)
    evaluate_entries(
        entries, settings, out, device=device, data_dir=args.data_dir, reuse=not args.force, force=args.force
    )
    if rank == 0:
        print(f"wrote {write_metrics_csv(out)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from vaebench.report.build import write_report

    for line in write_report(Path(args.out), _registry(args), args.data_dir):
        print(line)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from vaebench.report.compare import compare_models, format_table, write_comparison

    table = compare_models(Path(args.out), args.models)
    print(f"paired differences A − B on {table.attrs['dataset']}, nats per image (95% interval: mean ± 1.96 s.e.)")
    print(format_table(table))
    for note in table.attrs["notes"]:
        print(f"note: {note}")
    for path in write_comparison(Path(args.out), table):
        print(f"wrote {path}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from vaebench.protocol.runner import evaluate_entries

    baseline_path = Path(args.baseline)
    entries, settings = _entries(args), _settings(args)
    if not args.update:
        baseline = read_baseline(baseline_path)
        made_with = baseline_settings(baseline, baseline_path)
        if made_with != (settings.k, settings.n_test):
            raise SettingsError(
                f"{baseline_path} was made with k, n_test = {made_with}, not {settings.k}, "
                f"{settings.n_test}: run check with those settings, or --update"
            )
    records = evaluate_entries(
        entries, settings, Path(args.out), device=args.device, data_dir=args.data_dir, reuse=False, store=False
    )
    if args.update:
        print(f"wrote {baseline_path} ({write_baseline(baseline_path, records)} rows)")
        return 0
    explicit = bool(args.names) or args.model is not None
    rows = compare(records, baseline, [r.model for r in records] if explicit else None)
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_rows", 500):
        print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    failed = [r for r in rows if not r.ok]
    print(
        f"check: {len(rows) - len(failed)} of {len(rows)} metrics within tolerance ({Z_CHECK:g} Monte Carlo "
        f"standard errors); {len(failed)} failed"
    )
    return 1 if failed else 0


def cmd_all(args: argparse.Namespace) -> int:
    cmd_eval(args)
    return cmd_report(args)


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors said in one line (exit 2), as every other bad input is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def _path(value: str) -> str:
    """An argparse type: a file or folder name that is not empty (an empty one would mean the current folder)."""
    if not value.strip() or "\0" in value:
        raise argparse.ArgumentTypeError(f"{value!r} is not a usable path: give a file or folder name")
    return value


def _common(p: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    p.add_argument(
        "--data-dir",
        type=_path,
        default=default,
        help="dataset directory (default: $VAEBENCH_DATA, else ~/.cache/vaebench/data)",
    )
    p.add_argument(
        "--device",
        default=argparse.SUPPRESS if suppress else "auto",
        help="auto, cpu or cuda[:N] (default: auto, CUDA when there is one)",
    )
    p.add_argument(
        "--registry",
        action="append",
        type=_path,
        default=default,
        metavar="DIR",
        help="an outside registry folder (one folder per model with an entry.toml; repeatable; "
        "also $VAEBENCH_REGISTRY)",
    )


def _protocol_options(p: argparse.ArgumentParser, defaults: dict, out: bool = True) -> None:
    p.add_argument(
        "--k", type=int, default=defaults["k"], help="importance samples per test point (default %(default)s)"
    )
    p.add_argument(
        "--n-test",
        type=int,
        default=defaults["n_test"],
        help="evaluate a fixed random sample of N test points, the same for every model "
        "(default %(default)s; None: all)",
    )
    p.add_argument("--batch-size", type=int, default=100, help="test points per batch (default %(default)s)")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="samples per chunk (default %(default)s: what fits a quarter of free GPU memory or 64 MiB on the CPU)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the importance samples (default %(default)s)")
    p.add_argument(
        "--backend",
        default="torch",
        choices=BACKENDS,
        help="log-weight path (default %(default)s; compiled: the same formula fused by torch.compile, "
        "about 1.25x faster on a 2-core CPU after a few seconds of compiling; triton: the fused CUDA kernels, "
        "which never materialise the [K, B, D] logits)",
    )
    p.add_argument(
        "--surgery-samples",
        type=int,
        default=defaults["surgery_samples"],
        help="draws from q(z) for the ELBO-surgery expectations (default %(default)s)",
    )
    p.add_argument(
        "--out", type=_path, default="results", help="results folder (default %(default)s, in the current folder)"
    )
    p.add_argument(
        "--model",
        metavar="FILE.py:FUNCTION",
        help="a one-off model not in any registry: a function returning a model with the interface "
        "(or package.module:function); needs --checkpoint and --dataset",
    )
    p.add_argument("--checkpoint", type=_path, metavar="FILE", help="the one-off model's weights (a state_dict)")
    p.add_argument("--dataset", help=f"the one-off model's dataset: one of {', '.join(DATASETS)}")
    p.add_argument("--name", help="the one-off model's name in the results (default: the checkpoint's file stem)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vaebench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, suppress=False)
    p.add_argument(
        "--out",
        type=_path,
        default="results",
        help="results folder of the main job (eval, then report) when no subcommand is given (default %(default)s)",
    )
    common = _Parser(add_help=False)  # the same options after the subcommand
    _common(common, suppress=True)
    sub = p.add_subparsers(dest="command")
    sub.add_parser("list", help="the registry and which entries are trained", parents=[common]).set_defaults(
        func=cmd_list
    )
    t = sub.add_parser("train", help="train or resume one registry entry", parents=[common])
    t.add_argument("name", help="a registry entry with built-in [model] and [train] settings")
    t.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="stop this run after this many more epochs (default %(default)s: the entry's schedule); "
        "the same command continues later",
    )
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="full protocol on trained models (default: all) -> results/", parents=[common])
    e.add_argument("names", nargs="*", help="registry names (default: every trained model)")
    _protocol_options(e, EVAL_DEFAULTS)
    e.add_argument(
        "--force",
        action="store_true",
        help="re-evaluate even if a stored record matches, and replace one made with other settings",
    )
    e.set_defaults(func=cmd_eval)
    m = sub.add_parser("compare", help="paired differences of models of one dataset", parents=[common])
    m.add_argument("models", nargs="+", help="two or more evaluated models of one dataset")
    m.add_argument("--out", type=_path, default="results", help="results folder (default %(default)s)")
    m.set_defaults(func=cmd_compare)
    r = sub.add_parser("report", help="tables and plots from stored results", parents=[common])
    r.add_argument("--out", type=_path, default="results", help="results folder (default %(default)s)")
    r.set_defaults(func=cmd_report)
    c = sub.add_parser("check", help="quick protocol vs a baseline file (exit 1 on a regression)", parents=[common])
    c.add_argument("names", nargs="*", help="registry names (default: every trained model)")
    _protocol_options(c, CHECK_DEFAULTS)
    c.add_argument(
        "--baseline",
        type=_path,
        default="results/baseline.csv",
        help="the baseline CSV to compare with, or to write with --update (default %(default)s)",
    )
    c.add_argument("--update", action="store_true", help="write the baseline instead of comparing")
    c.set_defaults(func=cmd_check)
    defaults = {
        **EVAL_DEFAULTS,
        "batch_size": 100,
        "chunk_size": None,
        "seed": 0,
        "backend": "torch",
        "names": [],
        "force": False,
        "model": None,
        "checkpoint": None,
        "dataset": None,
        "name": None,
    }
    p.set_defaults(func=cmd_all, **defaults)
    return p


def main(argv: list[str]) -> int:
    """Run the command line; the exit status (2 for bad input, with one line that names the fix)."""
    args = parser().parse_args(argv)
    keep_freed_memory()
    warnings.formatwarning = _one_line_warning
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(
            "interrupted: results stored before are intact; run the same command to go on (eval resumes from "
            "its last finished batch)",
            file=sys.stderr,
        )
        return 130
    except ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, an unwritable folder: what was stored before is intact
        where = f" ({err.filename})" if err.filename else ""
        fix = {
            "train": "free space, or make the model's folder writable",
            "check": "free space, or choose another file with --baseline",
        }.get(args.command, "free space or choose another folder with --out")
        print(f"error: {err.strerror or err}{where}; earlier results are intact: {fix}", file=sys.stderr)
        return 2


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """Warnings said in one line, as errors are (not the source line Python shows by default)."""
    return f"warning: {str(message).splitlines()[0] if str(message) else category.__name__}\n"


def run() -> None:
    """The ``vaebench`` console command."""
    sys.exit(main(sys.argv[1:]))
