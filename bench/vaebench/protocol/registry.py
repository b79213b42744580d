"""The registry: trained models by name, each declared by an ``entry.toml`` file beside its checkpoint.

A registry folder holds one folder per model::

    NAME/entry.toml        name, dataset, [model], [train], [[published]] (see README, "Evaluate your own model")
    NAME/checkpoint.pt     the weights: {"model": state_dict, "meta": {...}} or a bare state_dict
    NAME/checkpoint.json   training history (written by ``train``)

The built-in registry is the project's ``models/`` folder (shipped inside the installed package);
outside folders join with ``--registry DIR`` (repeatable) or ``$VAEBENCH_REGISTRY`` (``os.pathsep``
separated). An entry's ``[model]`` is either a built-in family (``family = "vae"`` with the
:class:`~vaebench.families.vae.ModelConfig` settings) or ``factory = "package.module:function"`` /
``"path/to/file.py:function"`` (relative to the entry file): a function returning any object with the
model interface (:mod:`vaebench.core.interface`), called with the other ``[model]`` keys. Importing a
factory runs its code by design; checkpoints load without executing code.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import json
import math
import os
import sys
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from vaebench.core.interface import missing_methods
from vaebench.families.vae import LIKELIHOODS, ModelConfig, build_model
from vaebench.protocol.checkpoint import CheckpointError, check_weights, load_state
from vaebench.protocol.datasets import DATASETS, Dataset, load_dataset
from vaebench.protocol.train import TrainConfig

PACKAGE = Path(__file__).resolve().parent.parent
ENTRY_FILE = "entry.toml"
SECTIONS = ("vampprior", "iwae", "surgery", "tiny", "")  # report sections an entry may ask for; "" = leaderboard only


def builtin_registry() -> Path:
    """The built-in registry: ``models/`` of the checkout, or its copy inside an installed package."""
    checkout = PACKAGE.parent.parent / "models"
    return checkout if checkout.is_dir() else PACKAGE / "_models"


EXAMPLES = {("Published", "paper"): "", ("Published", "table"): "", ("Published", "value"): 0.0}


class RegistryError(ValueError):
    """An entry file, factory or model definition is unusable; the message names the file and the fix."""


class UnknownModelError(KeyError):
    """A model name that is not in the registry; the message suggests the closest names."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Published:
    """A published number: test log-likelihood (nats, negative) unless ``metric`` says otherwise."""

    paper: str
    table: str
    value: float
    metric: str = "log_likelihood"
    note: str = ""


@dataclass(frozen=True)
class Entry:
    """One registered model: what rebuilds it (a built-in ``model`` or a ``factory`` with ``settings``),
    its data, training settings, checkpoint and published numbers. ``source`` is the entry file."""

    name: str
    dataset: str
    source: Path
    checkpoint: Path
    model: ModelConfig | None = None
    factory: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig | None = None
    n_valid: int | None = None
    section: str = ""
    published: tuple[Published, ...] = ()
    one_off: bool = False  # given on the command line (--model), not by an entry file

    @property
    def history(self) -> Path:
        return self.checkpoint.with_suffix(".json")

    @property
    def state(self) -> Path:
        return self.checkpoint.with_name("state.pt")

    @property
    def trained(self) -> bool:
        return self.checkpoint.is_file()

    @property
    def latent_dim(self) -> int | None:
        return self.model.latent_dim if self.model is not None else None

    def load_data(self, root: str | os.PathLike | None = None) -> Dataset:
        return load_dataset(self.dataset, root, n_valid=self.n_valid)

    def describe(self) -> dict[str, Any]:
        """The model definition as plain values: the built-in config or the factory and its settings."""
        if self.model is not None:
            return asdict(self.model)
        return {"factory": self.factory, **self.settings}


def _fail(path: Path, message: str, key: str | None = None) -> RegistryError:
    """An error naming ``path`` and, where ``key`` appears in the file, its line."""
    line = ""
    if key is not None and path.is_file():
        for number, text in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if text.split("=")[0].strip() == key:
                line = f", line {number}"
                break
    return RegistryError(f"{path}{line}: {message}")


def _typed(path: Path, table: dict[str, Any], cls: type, what: str, required: tuple[str, ...] = ()) -> Any:
    """A dataclass ``cls`` from a TOML table, with unknown keys, missing ``required`` keys and wrong types named
    (the type of a field is that of its default, or of ``EXAMPLES`` for fields without one)."""
    known = {f.name: f for f in fields(cls)}
    missing = [key for key in required if key not in table]
    if missing:
        raise _fail(path, f"[{what}] lacks {', '.join(missing)}")
    for key, value in table.items():
        if key not in known:
            raise _fail(path, f"unknown key {key!r} in [{what}]; known: {', '.join(known)}", key)
        default = known[key].default if known[key].default is not MISSING else EXAMPLES[cls.__name__, key]
        ok = isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int))
        if isinstance(default, tuple):
            ok = (
                isinstance(value, list)
                and len(value) == len(default)
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            )
            value = tuple(float(v) for v in value) if ok else value
        if not ok or isinstance(value, bool) != isinstance(default, bool):
            raise _fail(path, f"[{what}] {key} = {value!r} should be of type {type(default).__name__}", key)
        table = {**table, key: float(value) if isinstance(default, float) else value}
    try:
        return cls(**table)
    except ValueError as err:  # settings that do not fit together (the dataclass's own check)
        raise _fail(path, f"[{what}] {err}") from None


def valid_name(name: object) -> bool:
    """A model name usable as a file name everywhere: printable, no spaces or slashes, not hidden, at most 100
    bytes in UTF-8."""
    return (
        isinstance(name, str)
        and 0 < len(name.encode("utf-8", "surrogatepass")) <= 100  # bytes: file names beside it stay under 255
        and name.isprintable()
        and not name.startswith(".")
        and not any(c in name for c in "/\\ ")
    )


MODEL_CHOICES = {
    "net": ("gated", "tanh"),
    "prior": ("standard", "mog", "vamp", "vamp-data"),
    "levels": (1, 2),
    "likelihood": LIKELIHOODS,
    "decoder": ("mlp", "pixelcnn"),
    "hierarchy": ("vampprior", "iwae"),
}


FIXED_VALIDATION = ("binarized-mnist", "digits")  # datasets whose validation split is not a choice

MODEL_SIZE_LIMITS = {"depth": 64, "x_dim": 1_000_000}  # others: 100,000 (a weight matrix of 10^10 is no model here)


def _checked_model(path: Path, config: ModelConfig) -> ModelConfig:
    """``config`` if its choices are known and its sizes positive; a :class:`RegistryError` naming the key."""
    for key, choices in MODEL_CHOICES.items():
        if getattr(config, key) not in choices:
            raise _fail(path, f"[model] {key} = {getattr(config, key)!r}; use one of {choices}", key)
    for key in ("x_dim", "z_dim", "hidden", "depth", "n_components", "z2_dim", "hidden2"):
        if not 1 <= getattr(config, key) <= MODEL_SIZE_LIMITS.get(key, 100_000):
            raise _fail(
                path, f"[model] {key} = {getattr(config, key)}: use 1..{MODEL_SIZE_LIMITS.get(key, 100_000):,}", key
            )
    low, high = config.logvar_limits
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise _fail(path, f"[model] logvar_limits = {list(config.logvar_limits)}: use two finite numbers, low < high")
    return config


def read_entry(path: Path) -> Entry:
    """Parse and check one entry file; a :class:`RegistryError` naming the file and line otherwise."""
    if not path.is_file():
        raise RegistryError(f"{path}: not a regular file; an entry is a TOML text file named entry.toml")
    try:
        spec = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise RegistryError(f"{path}: not valid TOML ({err})") from None
    except RecursionError:
        raise RegistryError(f"{path}: not an entry (nested too deeply to read)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RegistryError(f"{path}: cannot be read ({err})") from None
    allowed = {"name", "dataset", "n_valid", "section", "checkpoint", "model", "train", "published"}
    for key in spec:
        if key not in allowed:
            raise _fail(path, f"unknown key {key!r}; an entry has {', '.join(sorted(allowed))}", key)
    for key in ("name", "dataset", "model"):
        if key not in spec:
            raise _fail(path, f"missing {key!r}")
    name, dataset = spec["name"], spec["dataset"]
    if not valid_name(name):
        raise _fail(
            path, f"name = {name!r}: use a printable name of at most 100 bytes, without spaces or slashes", "name"
        )
    if dataset not in DATASETS:
        raise _fail(path, f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}", "dataset")
    n_valid = spec.get("n_valid")
    if n_valid is not None and (not isinstance(n_valid, int) or isinstance(n_valid, bool) or n_valid < 1):
        raise _fail(path, f"n_valid = {n_valid!r}: a positive whole number", "n_valid")
    if n_valid is not None and dataset in FIXED_VALIDATION:
        raise _fail(path, f"n_valid = {n_valid}: {dataset} has a fixed validation split; remove n_valid", "n_valid")
    section = spec.get("section", "")
    if section not in SECTIONS:
        raise _fail(path, f"section = {section!r}; use one of {', '.join(repr(s) for s in SECTIONS)}", "section")
    model_table = dict(spec["model"]) if isinstance(spec["model"], dict) else None
    if model_table is None:
        raise _fail(path, "[model] must be a table", "model")
    checkpoint = path.parent / str(spec.get("checkpoint", "checkpoint.pt"))
    published = []
    items = spec.get("published", [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise _fail(path, "published must be [[published]] tables (paper, table, value, metric, note)", "published")
    for item in items:
        try:
            published.append(_typed(path, item, Published, "[published]", required=("paper", "table", "value")))
        except TypeError as err:
            raise _fail(path, f"[[published]] {err}; it takes paper, table, value, metric, note") from None
        if not math.isfinite(published[-1].value):
            raise _fail(path, f"[[published]] value = {published[-1].value}: a published number is finite", "value")
    if "train" in spec and not isinstance(spec["train"], dict):
        raise _fail(path, "[train] must be a table of training settings", "train")
    train = _typed(path, spec["train"], TrainConfig, "train") if "train" in spec else None
    common = dict(
        name=name,
        dataset=dataset,
        source=path,
        checkpoint=checkpoint,
        train=train,
        n_valid=n_valid,
        section=section,
        published=tuple(published),
    )
    if "factory" in model_table:
        factory = model_table.pop("factory")
        if not isinstance(factory, str) or ":" not in factory:
            raise _fail(
                path, f"factory = {factory!r}: write 'package.module:function' or 'file.py:function'", "factory"
            )
        return Entry(factory=factory, settings=model_table, **common)
    family = model_table.pop("family", None)
    if family != "vae":
        raise _fail(
            path,
            f'[model] needs family = "vae" (the built-in VAE/HVAE) or factory = '
            f'"module:function"; got family = {family!r}',
            "family",
        )
    return Entry(model=_checked_model(path, _typed(path, model_table, ModelConfig, "model")), **common)


def registry_dirs(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """The built-in registry, then ``$VAEBENCH_REGISTRY``'s folders, then ``extra`` (``--registry``)."""
    env = [p for p in os.environ.get("VAEBENCH_REGISTRY", "").split(os.pathsep) if p]
    return [builtin_registry(), *map(Path, env), *map(Path, extra)]


def load_registry(dirs: Iterable[str | os.PathLike] | None = None) -> dict[str, Entry]:
    """Every entry of ``dirs`` (default :func:`registry_dirs`) by name. A folder may also be a single
    model's folder (holding ``entry.toml`` itself). Two entries with one name: an error naming both."""
    entries: dict[str, Entry] = {}
    folders = dict.fromkeys(Path(d).resolve() for d in (registry_dirs() if dirs is None else dirs))  # each once
    for folder in folders:
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise RegistryError(
                f"registry folder {folder} {what} (from --registry or VAEBENCH_REGISTRY): give a folder holding "
                "one folder per model, each with an entry.toml"
            )
        files = [folder / ENTRY_FILE] if (folder / ENTRY_FILE).is_file() else sorted(folder.glob(f"*/{ENTRY_FILE}"))
        for path in files:
            if path.parent.name.startswith("."):
                continue
            entry = read_entry(path)
            if entry.name in entries and entries[entry.name].source.resolve() == path.resolve():
                continue  # the same file reached twice (a built-in model's folder given as a registry)
            if entry.name in entries:
                raise RegistryError(
                    f"two entries are named {entry.name!r}: {entries[entry.name].source} and {path}; rename one"
                )
            entries[entry.name] = entry
    return entries


def get(registry: dict[str, Entry], name: str) -> Entry:
    """The entry called ``name``; an :class:`UnknownModelError` that suggests the closest names otherwise."""
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, registry, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `vaebench list` shows them"
    raise UnknownModelError(
        f"unknown model {name!r}{hint} (outside entries join with --registry DIR; a one-off "
        "model with --model FILE.py:FUNCTION --checkpoint FILE --dataset NAME)"
    )


def resolve_factory(spec: str, base: Path) -> tuple[Callable[..., Any], Path | None]:
    """The function named by ``spec`` (``file.py:function``, relative to ``base``, or
    ``package.module:function``) and its source file; a :class:`RegistryError` otherwise."""
    target, _, function = spec.rpartition(":")
    if not target or not function.isidentifier():
        raise RegistryError(f"factory {spec!r}: write 'package.module:function' or 'path/to/file.py:function'")
    try:
        if target.endswith(".py"):
            file = (base / target).resolve()
            if not file.is_file():
                raise RegistryError(f"factory {spec!r}: no file {file}")
            module_name = f"vaebench_user_{hashlib.sha256(str(file).encode()).hexdigest()[:12]}"
            module = sys.modules.get(module_name)
            if module is None:
                loader_spec = importlib.util.spec_from_file_location(module_name, file)
                module = importlib.util.module_from_spec(loader_spec)
                sys.modules[module_name] = module
                try:
                    loader_spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[module_name]
                    raise
        else:
            module = importlib.import_module(target)
            file = Path(module.__file__) if getattr(module, "__file__", None) else None
    except RegistryError:
        raise
    except (Exception, SystemExit) as err:  # the user's module failed to import (or exited): say which and why
        raise RegistryError(f"factory {spec!r} could not be imported ({type(err).__name__}: {err})") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise RegistryError(f"factory {spec!r}: {target} has no function {function!r}")
    return fn, file


def file_hash(path: Path) -> str:
    """SHA-256 of a file, hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_key(entry: Entry) -> dict[str, str]:
    """What besides the checkpoint determines a model's numbers: for a factory, the hash of its source file and
    its settings; for a built-in family (its code is versioned with the protocol), nothing when the checkpoint
    records the [model] settings (hashed with it, and :func:`load` refuses a mismatch), else their hash."""
    if entry.factory is None:
        if entry.model is None or not entry.checkpoint.is_file():
            return {}
        _, meta = weights_and_meta(load_state(entry.checkpoint))
        if isinstance(meta.get("model"), dict):
            return {}
        settings = json.dumps(asdict(entry.model), sort_keys=True)
        return {"model_settings_sha256": hashlib.sha256(settings.encode()).hexdigest()}
    _, file = resolve_factory(entry.factory, entry.source.parent)
    digest = hashlib.sha256(repr(sorted(entry.settings.items())).encode())
    if file is not None and file.is_file():
        digest.update(file.read_bytes())
    return {"factory_sha256": digest.hexdigest()}


def check_fits(entry: Entry, data: Dataset) -> None:
    """A :class:`RegistryError` when a built-in entry's ``x_dim`` is not the size of ``data``'s images."""
    if entry.model is not None and entry.model.x_dim != data.dim:
        raise RegistryError(
            f"{entry.source}: [model] x_dim = {entry.model.x_dim}, but {entry.dataset} images have {data.dim} "
            f"pixels; set x_dim = {data.dim}"
        )


def build(entry: Entry, data: Dataset | None = None) -> Any:
    """A fresh (untrained) model for ``entry``; ``vamp-data`` priors take pseudo-inputs from ``data``."""
    if entry.model is not None:
        return build_model(entry.model, data.train if data is not None else None)
    fn, _ = resolve_factory(entry.factory, entry.source.parent)
    try:
        model = fn(**entry.settings)
    except (Exception, SystemExit) as err:  # the user's code raised, or called sys.exit
        raise RegistryError(
            f"{entry.source}: factory {entry.factory!r} failed with settings {entry.settings} "
            f"({type(err).__name__}: {err})"
        ) from None
    missing = missing_methods(model)
    if missing:
        raise RegistryError(
            f"{entry.source}: factory {entry.factory!r} returned a {type(model).__name__} without "
            f"{', '.join(missing)}; the model interface needs posterior(x), prior() and "
            "likelihood(z) (see vaebench.core.interface)"
        )
    return model


def weights_and_meta(saved: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, meta) of a checkpoint that :func:`~vaebench.protocol.checkpoint.load_state` accepted:
    ``{"model": state_dict, "meta": {...}}`` or a bare state_dict."""
    if "model" in saved:
        return saved["model"], saved.get("meta", {})
    return saved, {}


def load(entry: Entry) -> Any:
    """The trained model of ``entry`` from its checkpoint, checked against the entry (name, settings,
    keys, shapes, dtypes, finite values)."""
    model = build(entry)
    weights, meta = weights_and_meta(load_state(entry.checkpoint))
    fix = f"retrain with `vaebench train {entry.name}` or restore the file with git"
    if meta.get("name", entry.name) != entry.name:
        raise CheckpointError(f"checkpoint {entry.checkpoint} holds model {meta['name']!r}, not {entry.name!r}; {fix}")
    # settings added since a checkpoint was written take their defaults (every earlier model is Bernoulli)
    stored = meta.get("model")
    if isinstance(stored, dict):
        stored = {**asdict(ModelConfig()), **stored}
    if entry.model is not None and "model" in meta and stored != asdict(entry.model):
        raise CheckpointError(
            f"checkpoint {entry.checkpoint} was trained with model settings {meta['model']}, but "
            f"entry {entry.name!r} ({entry.source}) says {asdict(entry.model)}; {fix}"
        )
    if isinstance(model, torch.nn.Module):
        check_weights(model, weights, entry.checkpoint)
        model.load_state_dict(weights)
        bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise CheckpointError(
                f"checkpoint {entry.checkpoint} holds NaN or infinite values in {', '.join(bad[:3])}; {fix}"
            )
        return model.eval()
    if callable(getattr(model, "load_state_dict", None)):
        try:
            model.load_state_dict(weights)
        except (Exception, SystemExit) as err:
            raise CheckpointError(
                f"{entry.name}: its load_state_dict refused {entry.checkpoint} ({type(err).__name__}: {err}); {fix}"
            ) from None
    return model


def data_checksum(data: Dataset) -> str:
    """SHA-256 over the three splits as uint8 bytes: binary values as they are, 8-bit grey levels times 255."""
    h = hashlib.sha256()
    for split in (data.train, data.valid, data.test):
        h.update((split if data.binary else (split * 255).round()).to(torch.uint8).numpy().tobytes())
    return h.hexdigest()
