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

from vaebench.protocol.datasets import Dataset
from vaebench.core.estimators import elbo, sample_posterior
from vaebench.protocol.checkpoint import CheckpointError, atomic_save, atomic_write_json, load_state


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
    values = [elbo(model, x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return float(torch.cat(values).double().mean())


def _load_weights(model: torch.nn.Module, saved: dict, path: Path, opt: torch.optim.Optimizer | None = None) -> None:
    """Load ``saved`` (and the optimiser's state) into ``model``; a :class:`CheckpointError` naming
    ``path`` when it was written for another architecture."""
    try:
        model.load_state_dict(saved["model"])
        if opt is not None:
            opt.load_state_dict(saved["optimizer"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path} does not match this model ({str(err).splitlines()[0]}): it was written "
                              "for other registry settings; delete it to train from scratch, or restore it with "
                              "git") from None


def _warm_restart(model: torch.nn.Module, best_path: Path, seed: int, gen: torch.Generator) -> dict:
    """Continue from a committed best checkpoint when the per-epoch state file is gone (a fresh
    clone): the best weights, the epoch count and history; Adam's moments start again from zero."""
    _load_weights(model, load_state(best_path), best_path)
    info = json.loads(best_path.with_suffix(".json").read_text())
    since_best = info["epochs"] - max(info["history"], key=lambda r: r.get("valid_elbo", -math.inf))["epoch"]
    gen.manual_seed(seed + info["epochs"])
    torch.manual_seed(seed + info["epochs"])
    history = info["history"] + [{"epoch": info["epochs"], "event": "warm restart from the best checkpoint"}]
    return {"epoch": info["epochs"], "best": info["best_valid_elbo"], "since_best": since_best,
            "history": history, "wall_time": info["wall_time_s"], "done": info["finished"]}


def train(build: Callable[[], torch.nn.Module], data: Dataset, cfg: TrainConfig, state_path: Path,
          best_path: Path, metadata: dict, max_epochs: int | None = None, device: str = "cpu") -> dict:
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
        raise ValueError(f"max_epochs={max_epochs}: train at least one epoch")
    torch.manual_seed(cfg.seed)
    model = build().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    st = {"epoch": 0, "best": -math.inf, "since_best": 0, "history": [], "wall_time": 0.0, "done": False}
    if state_path.is_file():
        saved = load_state(state_path)
        _load_weights(model, saved, state_path, opt)
        gen.set_state(saved["data_rng"])
        torch.set_rng_state(saved["torch_rng"])
        st = saved["progress"]
    elif best_path.is_file() and best_path.with_suffix(".json").is_file():
        st = _warm_restart(model, best_path, cfg.seed, gen)
    limit = cfg.max_epochs if max_epochs is None else min(cfg.max_epochs, st["epoch"] + max_epochs)
    valid = data.valid.to(device)
    bar = tqdm(range(st["epoch"], limit), desc=metadata.get("name", "train"), unit="epoch",
               initial=st["epoch"], total=cfg.max_epochs, disable=None)
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
            x = x_all[order[i:i + cfg.batch_size]].to(device)
            loss = -objective(model, x, cfg.k, beta, cfg.objective).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total -= float(loss.detach()) * len(x)
        val = validation_elbo(model, valid)
        if not math.isfinite(val):
            raise FloatingPointError(f"{metadata.get('name')}: validation ELBO is {val} at epoch {epoch + 1}; "
                                     "lower the learning rate or check the data")
        st["epoch"] = epoch + 1
        st["wall_time"] += time.perf_counter() - start
        st["history"].append({"epoch": epoch + 1, "beta": beta, "lr": learning_rate(cfg, epoch),
                              "train_objective": total / len(order),
                              "valid_elbo": val, "seconds": time.perf_counter() - start})
        if val > st["best"]:
            st["best"], st["since_best"] = val, 0
            atomic_save({"model": model.state_dict(), "meta": {**metadata, "train": asdict(cfg)}}, best_path)
        elif epoch + 1 > cfg.warmup_epochs:
            st["since_best"] += 1
        st["done"] = st["since_best"] >= cfg.patience or st["epoch"] >= cfg.max_epochs
        atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "data_rng": gen.get_state(),
                     "torch_rng": torch.get_rng_state(), "progress": st}, state_path)
        atomic_write_json({**metadata, "train": asdict(cfg), "best_valid_elbo": st["best"], "epochs": st["epoch"],
                           "finished": st["done"], "wall_time_s": st["wall_time"], "history": st["history"]},
                          best_path.with_suffix(".json"))
        bar.set_postfix(valid_elbo=f"{val:.2f}", best=f"{st['best']:.2f}", beta=f"{beta:.2f}")
    return st
