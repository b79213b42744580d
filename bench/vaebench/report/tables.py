"""The papers' tables (Markdown rows as frames): test log-likelihood next to the published number, ELBO surgery,
the VampPrior ordering, the training budget and the sources of the published numbers.

Only registry entries with a built-in model (``entry.model``) and training settings (``entry.train``) appear here;
outside models (factories) appear in the leaderboard only."""

from __future__ import annotations

import json

import pandas as pd

from vaebench.report.compare import paired_difference
from vaebench.report.format import fmt, published


def _built_in(entry) -> bool:
    return entry is not None and entry.model is not None and entry.train is not None


def _history(entry) -> dict | None:
    path = entry.history
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _epochs(entry) -> str:
    info = _history(entry)
    if info is None or "epochs" not in info:
        return ""
    return f"{info['epochs']}" + ("" if info.get("finished") else " (not converged)")


def likelihood_table(
    records: pd.DataFrame, entries: dict, group: str, whole: dict[str, tuple[float, float, str]] | None = None
) -> pd.DataFrame:
    """Our test log-likelihood next to the paper's: one row per built-in model of section ``group``. ``whole``
    (:func:`vaebench.report.per_example.whole_test_estimates`) gives subset rows a whole-test-set estimate, which
    is then what "ours − paper" compares."""
    whole = whole or {}
    rows = []
    for r in records.itertuples():
        entry = entries.get(r.model)
        if not _built_in(entry) or entry.section != group:
            continue
        paper = published(entry, "log_likelihood")
        estimate = whole.get(r.model)
        ours = estimate[0] if estimate else r.log_likelihood
        rows.append(
            {
                "model": r.model,
                "prior": entry.model.prior,
                "levels": entry.model.levels,
                "objective": f"{entry.train.objective} k={entry.train.k}",
                "log p(x) ± s.e.": f"{r.log_likelihood:.2f} ± {r.log_likelihood_se:.2f}",
                "K": r.k,
                "test points": r.n_test,
                "whole test set (estimate)": f"{estimate[0]:.2f} ± {estimate[1]:.2f} (via {estimate[2]})"
                if estimate
                else "",
                "ELBO": fmt(r.elbo),
                "active units": r.active_units,
                "paper": fmt(paper),
                "ours − paper": fmt(ours - paper),
                "epochs": _epochs(entry),
            }
        )
    return pd.DataFrame(rows)


def surgery_table(records: pd.DataFrame, entries: dict) -> pd.DataFrame:
    """ELBO-surgery terms by latent size, ours (± Monte Carlo s.e.) and the paper's (nats per training point)."""
    rows = []
    for r in records.itertuples():
        entry = entries.get(r.model)
        if not _built_in(entry) or entry.section != "surgery" or pd.isna(getattr(r, "mutual_info", None)):
            continue
        row = {"model": r.model, "z": entry.model.z_dim}
        for metric, ours, se in (
            ("elbo", r.train_elbo, None),
            ("avg_kl", r.avg_kl, r.mc_avg_kl_se),
            ("mutual_info", r.mutual_info, r.mutual_info_se),
            ("marginal_kl", r.marginal_kl, r.marginal_kl_se),
        ):
            row[f"{metric} (ours)"] = fmt(ours) + ("" if se is None or pd.isna(se) else f" ± {se:.2f}")
            row[f"{metric} (paper)"] = fmt(published(entry, metric))
        row["log N"] = fmt(r.log_n)
        row["epochs"] = _epochs(entry)
        rows.append(row)
    return pd.DataFrame(rows)


def prior_ordering(records: pd.DataFrame, entries: dict, values: dict[str, tuple[str | None, pd.Series]]) -> str:
    """Whether the VAEs of each depth order as in the paper, VampPrior > MoG > standard (two-level: VampPrior >
    standard): the paired per-test-point differences of L_K (``values``:
    :func:`vaebench.report.per_example.load_per_example`) between neighbours in that order, over their shared test
    points, with 95% intervals (:func:`vaebench.report.compare.paired_difference`)."""
    by_prior: dict[int, dict[str, str]] = {}
    for r in records.itertuples():
        entry = entries.get(r.model)
        if _built_in(entry) and entry.section == "vampprior" and r.model in values:
            by_prior.setdefault(entry.model.levels, {}).setdefault(entry.model.prior, r.model)
    lines = []
    for levels, models in sorted(by_prior.items()):
        ranked = [prior for prior in ("vamp", "mog", "standard") if prior in models]
        verdicts = []
        for better, worse in zip(ranked, ranked[1:]):
            d = paired_difference(values[models[better]][1], values[models[worse]][1])
            if d["shared points"] < 2:
                continue
            mean, se = d["mean A − B (nats)"], d["s.e. (nats)"]
            verdict = "holds" if d["95% low"] > 0 else "reversed" if d["95% high"] < 0 else "not shown at 95%"
            verdicts.append(
                f"{better} − {worse} = {mean:+.2f} ± {se:.2f} nats ({verdict}; {d['shared points']} shared test points)"
            )
        if verdicts:
            order = " > ".join({"vamp": "VampPrior", "mog": "MoG", "standard": "standard"}[p] for p in ranked)
            lines.append(f"Ordering of the paper, {levels}-level ({order}): " + "; ".join(verdicts) + ".")
    return "\n\n".join(lines)


def budget_table(entries: dict) -> pd.DataFrame:
    """Training budget per built-in registry entry: epochs done, the paper's schedule, the median seconds per epoch
    measured while training here, and the hours the remaining epochs of that schedule would take at that rate (an
    upper bound where early stopping may end training sooner); entries never trained say so."""
    rows = []
    for entry in entries.values():
        cfg = entry.train
        if not _built_in(entry):
            continue
        stop = f", early stopping {cfg.patience}" if cfg.patience < cfg.max_epochs else ""
        schedule = f"{'up to ' if stop else ''}{cfg.max_epochs} epochs{stop}"
        info = _history(entry)
        if info is None:
            rows.append(
                {
                    "model": entry.name,
                    "epochs": 0,
                    "schedule": schedule,
                    "s / epoch here": "",
                    "device": "",
                    "hours to finish here": "not trained",
                }
            )
            continue
        seconds = pd.Series([h["seconds"] for h in info.get("history", []) if "seconds" in h], dtype=float).median()
        epochs = info.get("epochs", 0)
        remaining = 0 if info.get("finished") else cfg.max_epochs - epochs
        rows.append(
            {
                "model": entry.name,
                "epochs": epochs,
                "schedule": schedule,
                "s / epoch here": fmt(seconds, 1),
                "device": info.get("device", ""),
                "hours to finish here": fmt(remaining * seconds / 3600, 1),
            }
        )
    return pd.DataFrame(rows)


def sources_table(entries: dict) -> pd.DataFrame:
    """Every published number the tables compare with: paper, table, metric, value and how it was checked."""
    return pd.DataFrame(
        [
            {
                "model": entry.name,
                "paper": p.paper,
                "table": p.table,
                "metric": p.metric,
                "value": fmt(p.value),
                "note": p.note,
            }
            for entry in entries.values()
            for p in entry.published
        ]
    )
