"""Training: the ELBO or IWAE L_k objective, KL warm-up, Adam, early stopping, resumable epochs.

Objective per example, with beta = min(1, epoch / warmup) on the prior/posterior ratio and
log w^beta = log p(x|z_k) + beta (log p(z_k) - log q(z_k|x)):
    IWAE: L_k^beta = log (1/k) sum_k exp(log w^beta_k);   ELBO: (1/k) sum_k log w^beta_k.
Model selection: the best validation ELBO (beta = 1); stop after
``patience`` epochs without improvement, counted only once warm-up is over.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from vaebench.core.estimators import elbo, sample_posterior
from vaebench.protocol.checkpoint import CheckpointError, atomic_save, atomic_write_json, load_state, weight_problems
from vaebench.protocol.datasets import Dataset
from vaebench.protocol.evaluate import check_data_kind
from vaebench.protocol.files import content_digest
from vaebench.protocol.settings import SettingsError


@dataclass
class TrainConfig:
    """Optimisation settings of one registry entry."""

    objective: str = "elbo"  # elbo or iwae
    k: int = 1
    lr: float = 5e-4
    batch_size: int = 100
    warmup_epochs: int = 100
    max_epochs: int = 2000
    patience: int = 50
    seed: int = 1
    adam_eps: float = 1e-8
    lr_schedule: str = "constant"  # constant, or burda (see learning_rate)


OBJECTIVES, LR_SCHEDULES = ("elbo", "iwae"), ("constant", "burda")


def check_config(cfg: TrainConfig, name: str = "this entry") -> None:
    """Raise :class:`SettingsError` naming the ``[train]`` key of ``name``'s entry unless the objective and
    schedule are known and the numbers are in range (k, batch size, epochs, patience >= 1; lr, eps > 0)."""
    choices = {"objective": OBJECTIVES, "lr_schedule": LR_SCHEDULES}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise SettingsError(f"{name}: [train] {key} = {getattr(cfg, key)!r}; use one of {', '.join(allowed)}")
    lowest = {"k": 1, "batch_size": 1, "max_epochs": 1, "patience": 1, "warmup_epochs": 0, "seed": 0}
    for key, low in lowest.items():
        value = getattr(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise SettingsError(f"{name}: [train] {key} = {value!r}; use a whole number of at least {low}")
    for key in ("lr", "adam_eps"):
        value = getattr(cfg, key)
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise SettingsError(f"{name}: [train] {key} = {value!r}; use a positive number")


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of 0-based ``epoch``: constant, or the IWAE paper's staged decay, where
    stage i = 1, 2, ... lasts 3^(i-1) epochs at lr * round(10^(1 - (i-1)/7), 1) / 10."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule != "burda":
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}: use constant or burda")
    stage, first = 1, 0
    while epoch >= first + 3 ** (stage - 1):
        first += 3 ** (stage - 1)
        stage += 1
    return cfg.lr * round(10 ** (1 - (stage - 1) / 7), 1) / 10


def objective(model, x: torch.Tensor, k: int, beta: float, kind: str = "iwae") -> torch.Tensor:
    """Per example, [B]: ``iwae`` is L_k^beta; ``elbo`` the k-sample average of log w^beta (the
    IWAE paper's "VAE with k samples"). Differentiable by reparameterisation."""
    q, prior = model.posterior(x), model.prior()
    z = sample_posterior(q, k)  # [k, B, d]
    lw = model.likelihood(z).log_prob(x) + beta * (prior.log_prob(z) - q.log_prob(z))
    if kind == "elbo":
        return lw.mean(0)
    return torch.logsumexp(lw, dim=0) - math.log(k)


@torch.no_grad()
def validation_elbo(model, x: torch.Tensor, batch_size: int = 1000) -> float:
    """Mean ELBO (beta = 1, one sample per example) over the validation split, in nats."""
    values = [elbo(model, x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return float(torch.cat(values).double().mean())


def _load_weights(model: torch.nn.Module, saved: dict, path: Path, opt: torch.optim.Optimizer | None = None) -> None:
    """Load ``saved["model"]`` (and the optimiser's state) into ``model`` after checking names, shapes and
    dtypes (:func:`weight_problems`: no silent casts); a :class:`CheckpointError` naming ``path`` when it was
    written for another architecture or converted."""
    fix = "it was written for other registry settings; delete it to train from scratch, or restore it with git"
    if "model" not in saved:
        raise CheckpointError(f'{path} holds no "model" entry (a bare state_dict?); {fix}')
    problems = weight_problems(model, saved["model"])
    if problems:
        raise CheckpointError(f"{path} does not match this model ({'; '.join(problems)}): {fix}")
    try:
        model.load_state_dict(saved["model"])
        if opt is not None:
            opt.load_state_dict(saved["optimizer"])
            _check_optimizer(opt)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path} does not match this model ({str(err).splitlines()[0]}): {fix}") from None


def _check_optimizer(opt: torch.optim.Optimizer) -> None:
    """Raise ``ValueError`` unless every optimiser state tensor (Adam's moments) has its parameter's shape."""
    for group in opt.param_groups:
        for param in group["params"]:
            for name, value in opt.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != param.shape:
                    raise ValueError(
                        f"optimizer state {name!r} has shape {tuple(value.shape)}, its parameter {tuple(param.shape)}"
                    )


STOPPING_RULE = ("max_epochs", "patience")  # may change between runs of one training (raise them to go on)


def training_key(cfg: TrainConfig, metadata: dict) -> dict:
    """What a training run is: the entry's name, dataset, data checksum, model settings and every [train]
    setting but the stopping rule. A stored state or checkpoint made with another key is not resumed."""
    return {
        "name": metadata.get("name"),
        "dataset": metadata.get("dataset"),
        "data_sha256": metadata.get("data_sha256"),
        "model": metadata.get("model"),
        "train": {k: v for k, v in asdict(cfg).items() if k not in STOPPING_RULE},
    }


def _check_key(stored: dict, key: dict, path: Path, best_path: Path) -> None:
    """Raise a :class:`CheckpointError` naming the settings in which ``stored`` (from ``path``) differs from
    ``key``; settings one side does not have (older files, newer options) are not compared."""
    stored, key = json.loads(json.dumps(stored)), json.loads(json.dumps(key))  # tuples and lists alike
    changed = []
    for part in ("name", "dataset", "data_sha256", "model", "train"):
        old, new = stored.get(part), key.get(part)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += [
                f"{part}.{k}={old[k]!r} (now {new[k]!r})" for k in sorted(old.keys() & new.keys()) if old[k] != new[k]
            ]
        elif old is not None and new is not None and old != new:
            changed.append(f"{part}={old!r} (now {new!r})")
    if changed:
        raise CheckpointError(
            f"{path} was trained with {', '.join(changed)}: restore those settings to continue it, or delete "
            f"{' and '.join(sorted({str(path), str(best_path), str(best_path.with_suffix('.json'))}))} to train "
            "from scratch with the new ones"
        )


def _restore_state(
    model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, path: Path, key: dict, best_path: Path
) -> dict:
    """Resume from the per-epoch state file: weights, optimiser, both generators and the progress; a
    :class:`CheckpointError` naming ``path`` and the fix when it is unreadable, does not match, or was made
    with another :func:`training_key`."""
    saved = load_state(path)
    if "digest" in saved and saved["digest"] != content_digest({k: v for k, v in saved.items() if k != "digest"}):
        raise CheckpointError(
            f"training state {path} is damaged (its content does not match its checksum); delete it to continue "
            "from the best checkpoint beside it (or from scratch)"
        )
    if isinstance(saved.get("key"), dict):
        _check_key(saved["key"], key, path, best_path)
    _load_weights(model, saved, path, opt)
    progress = saved.get("progress")
    try:
        _check_progress(progress)
        gen.set_state(saved["data_rng"])
        torch.set_rng_state(saved["torch_rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"training state {path} is damaged or from another version ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); delete it to continue from the "
            "best checkpoint beside it (or from scratch)"
        ) from None
    return progress


def _check_progress(progress: object) -> None:
    """Raise ``ValueError`` unless ``progress`` has the keys and types :func:`train` writes."""
    types = {"epoch": int, "best": float, "since_best": int, "history": list, "wall_time": float, "done": bool}
    if not isinstance(progress, dict):
        raise ValueError(f"'progress' is a {type(progress).__name__}, not a dict")
    for key, kind in types.items():
        value = progress.get(key)
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if not ok or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"'progress' {key!r} is {value!r}, expected a {kind.__name__}")


def _read_history(path: Path) -> dict:
    """The training record ``checkpoint.json`` beside a best checkpoint, checked for what a warm restart needs
    (epochs, history with epochs, best validation ELBO, wall time, finished); a :class:`CheckpointError`
    naming ``path`` and the fix otherwise."""
    fix = f"restore it with `git checkout -- {path}`, or delete it (and the checkpoint beside it) to train from scratch"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{path} is not valid JSON ({err.msg}, line {err.lineno}): it is truncated or damaged; {fix}"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {err}); {fix}") from None
    problem = _history_problem(info)
    if problem:
        raise CheckpointError(f"{path} is not a training record: {problem}; {fix}")
    return info


def _history_problem(info: object) -> str:
    """What a warm restart cannot use in a ``checkpoint.json`` object, or "" when nothing."""
    if not isinstance(info, dict):
        return f"it holds a JSON {type(info).__name__}, expected an object"
    number = (int, float)
    expected = {"epochs": int, "best_valid_elbo": number, "wall_time_s": number, "finished": bool, "history": list}
    for key, kind in expected.items():
        value = info.get(key)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            return f"{key!r} is {value!r}, expected {'a number' if kind is number else f'a JSON {kind.__name__}'}"
    if info["epochs"] < 0:
        return f"'epochs' is {info['epochs']}, expected 0 or more"
    if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in info["history"]):
        return "a 'history' row is not an object with an integer 'epoch'"
    return ""


def _warm_restart(
    model: torch.nn.Module, best_path: Path, seed: int, gen: torch.Generator, key: dict, name: str | None = None
) -> dict:
    """Continue from a committed best checkpoint when the per-epoch state file is gone (a fresh
    clone): the best weights, the epoch count and history; Adam's moments start again from zero.
    Both the checkpoint and its ``.json`` record are checked first (:func:`_read_history`), and its model and
    [train] settings against ``key`` (the data checksum there is provenance of the machine that trained it)."""
    info = _read_history(best_path.with_suffix(".json"))
    _check_key({"model": info.get("model"), "train": info.get("train")}, key, best_path, best_path)
    saved = load_state(best_path)
    owner = saved.get("meta", {}).get("name") if isinstance(saved.get("meta"), dict) else None
    if owner is not None and name is not None and owner != name:
        raise CheckpointError(
            f"{best_path} holds model {owner!r}, not {name!r}: give {name!r} a checkpoint path of its own "
            "(training would write over the other model's weights)"
        )
    _load_weights(model, saved, best_path)
    scored = [r for r in info["history"] if isinstance(r.get("valid_elbo"), int | float)]
    since_best = info["epochs"] - max(scored, key=lambda r: r["valid_elbo"])["epoch"] if scored else 0
    gen.manual_seed(seed + info["epochs"])
    torch.manual_seed(seed + info["epochs"])
    history = info["history"] + [{"epoch": info["epochs"], "event": "warm restart from the best checkpoint"}]
    return {
        "epoch": info["epochs"],
        "best": float(info["best_valid_elbo"]),
        "since_best": since_best,
        "history": history,
        "wall_time": float(info["wall_time_s"]),
        "done": info["finished"],
    }


def _diverged(metadata: dict, epoch: int, what: str) -> FloatingPointError:
    return FloatingPointError(
        f"{metadata.get('name', 'model')}: the {what} became NaN or infinite in epoch {epoch + 1} (training "
        "diverged); lower [train] lr or check the data, then delete the state file to start again (the best "
        "checkpoint so far is kept)"
    )


def train(
    build: Callable[[], torch.nn.Module],
    data: Dataset,
    cfg: TrainConfig,
    state_path: Path,
    best_path: Path,
    metadata: dict,
    max_epochs: int | None = None,
    device: str = "cpu",
) -> dict:
    """Train the model that ``build()`` makes, after seeding every generator with ``cfg.seed`` (so two fresh
    runs give bit-identical weights on the CPU), and return its history; resumes from ``state_path``
    when it exists.

    Every epoch writes ``state_path`` (model, optimiser, RNG states, history) atomically, the best
    model so far to ``best_path``, and ``metadata`` with the history to ``best_path`` as ``.json``.
    Without a state file but with a committed checkpoint, training continues from it
    (:func:`_warm_restart`). ``max_epochs`` caps this
    run (the same call continues later). Same seed and data give the same weights on CPU whether or
    not a run was interrupted between epochs.
    """
    if max_epochs is not None and max_epochs < 1:
        raise SettingsError(f"max_epochs={max_epochs}: train at least one epoch")
    check_config(cfg, metadata.get("name", "this entry"))
    torch.manual_seed(cfg.seed)
    model = build().to(device)
    check_data_kind(model, data, data.valid[:1].to(device), metadata.get("name", "model"))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    st = {"epoch": 0, "best": -math.inf, "since_best": 0, "history": [], "wall_time": 0.0, "done": False}
    key = training_key(cfg, metadata)
    if state_path.is_file():
        st = _restore_state(model, opt, gen, state_path, key, best_path)
    elif best_path.is_file() and best_path.with_suffix(".json").is_file():
        st = _warm_restart(model, best_path, cfg.seed, gen, key, metadata.get("name"))
    st["done"] = st["since_best"] >= cfg.patience or st["epoch"] >= cfg.max_epochs  # the stopping rule may change
    limit = cfg.max_epochs if max_epochs is None else min(cfg.max_epochs, st["epoch"] + max_epochs)
    valid = data.valid.to(device)
    bar = tqdm(
        range(st["epoch"], limit),
        desc=metadata.get("name", "train"),
        unit="epoch",
        initial=st["epoch"],
        total=cfg.max_epochs,
        disable=None,
    )
    for epoch in bar:
        if st["done"]:
            break
        start = time.perf_counter()
        beta = min(1.0, (epoch + 1) / cfg.warmup_epochs) if cfg.warmup_epochs > 0 else 1.0
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, epoch)
        x_all = data.training_epoch_data(gen)
        order = torch.randperm(len(x_all), generator=gen)
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            x = x_all[order[i : i + cfg.batch_size]].to(device)
            try:
                loss = -objective(model, x, cfg.k, beta, cfg.objective).mean()
            except ValueError as err:  # torch.distributions refusing the NaN parameters a diverged model gives
                if not opt.state:  # before any step: not a divergence
                    raise
                raise _diverged(metadata, epoch, "weights") from err
            if not loss.isfinite():
                raise _diverged(metadata, epoch, "training objective")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total -= float(loss.detach()) * len(x)
        val = validation_elbo(model, valid)
        if not math.isfinite(val):
            raise _diverged(metadata, epoch, "validation ELBO")
        st["epoch"] = epoch + 1
        st["wall_time"] += time.perf_counter() - start
        st["history"].append(
            {
                "epoch": epoch + 1,
                "beta": beta,
                "lr": learning_rate(cfg, epoch),
                "train_objective": total / len(order),
                "valid_elbo": val,
                "seconds": time.perf_counter() - start,
            }
        )
        if val > st["best"]:
            st["best"], st["since_best"] = val, 0
            atomic_save({"model": model.state_dict(), "meta": {**metadata, "train": asdict(cfg)}}, best_path)
        elif epoch + 1 > cfg.warmup_epochs:
            st["since_best"] += 1
        st["done"] = st["since_best"] >= cfg.patience or st["epoch"] >= cfg.max_epochs
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "data_rng": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "progress": st,
            "key": key,
        }
        atomic_save({**state, "digest": content_digest(state)}, state_path)
        atomic_write_json(
            {
                **metadata,
                "train": asdict(cfg),
                "best_valid_elbo": st["best"],
                "epochs": st["epoch"],
                "finished": st["done"],
                "wall_time_s": st["wall_time"],
                "history": st["history"],
            },
            best_path.with_suffix(".json"),
        )
        bar.set_postfix(valid_elbo=f"{val:.2f}", best=f"{st['best']:.2f}", beta=f"{beta:.2f}")
    return st
