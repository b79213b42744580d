"""The leaderboard: every evaluated model of each dataset, built-in or outside, ranked by test log-likelihood."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vaebench.protocol import registry
from vaebench.report.format import (
    PIXELS,
    bits_per_dim,
    bits_per_dim_se,
    dataset_title,
    fmt,
    fmt_se,
    markdown,
    ordered_datasets,
    pixels,
    published,
    value,
)

INTRO = (
    "Every evaluated model, ranked within its dataset by log p(x) (the IWAE bound L_K averaged over the test "
    "points; higher is better), built-in or outside the registry. Nats are per image; bits per dimension are "
    "bits/dim = −log p(x) / (D ln 2), with D the pixels of an image ({pixels}); lower is better. ± is one standard "
    "error over the test points. Gap: L_K − ELBO. Active units: latent units whose posterior mean varies over the "
    "test points (variance > 0.01), of the latent size the registry entry gives. I[n; z] and marginal KL: the "
    "ELBO-surgery terms on the training split (nats per training point). Rows with another K or other test points "
    "are not strictly comparable (a larger K gives a higher L_K; a test subset has its own mean): `vaebench "
    "compare A B` gives paired differences over the test points two models share."
)


def source(entry) -> str:
    """Where a model comes from: the built-in registry, an outside registry folder or factory, or nowhere (a one-off
    ``--model`` run, or an entry since removed)."""
    if entry is None:
        return "not in the registry"
    builtin = registry.builtin_registry().resolve()
    if entry.model is None:
        return "outside (factory)"
    return "built-in" if builtin in Path(entry.source).resolve().parents else "outside"


def latent_size(entry) -> int | None:
    """The latent size the entry gives: the built-in model's, or a factory's ``z_dim`` / ``latent_dim`` setting."""
    if entry is None:
        return None
    if entry.latent_dim is not None:
        return entry.latent_dim
    size = next((entry.settings.get(k) for k in ("latent_dim", "z_dim") if k in entry.settings), None)
    return size if isinstance(size, int) else None


def leaderboard(records: pd.DataFrame, entries: dict, dataset: str) -> pd.DataFrame:
    """One row per evaluated model of ``dataset``, best log p(x) first."""
    rows = records[records["dataset"] == dataset].sort_values(["log_likelihood", "model"], ascending=[False, True])
    table = []
    for rank, r in enumerate(rows.itertuples(), start=1):
        entry = entries.get(r.model)
        d = pixels(dataset, entry)
        paper = published(entry, "log_likelihood")
        latent = latent_size(entry)
        mi, kl = value(r, "mutual_info"), value(r, "marginal_kl")
        table.append(
            {
                "rank": rank,
                "model": r.model,
                "source": source(entry),
                "log p(x) ± s.e. (nats)": fmt_se(r.log_likelihood, r.log_likelihood_se),
                "bits/dim ± s.e.": fmt_se(
                    bits_per_dim(r.log_likelihood, d), bits_per_dim_se(r.log_likelihood_se, d), 4
                ),
                "ELBO (nats)": fmt(r.elbo),
                "ELBO (bits/dim)": fmt(bits_per_dim(r.elbo, d), 4),
                "gap ± s.e. (nats)": fmt_se(r.elbo_gap, r.elbo_gap_se),
                "active / latent units": f"{r.active_units} / {latent if latent is not None else '?'}",
                "I[n; z] (nats)": fmt_se(mi, value(r, "mutual_info_se"), 3) if mi is not None else "",
                "marginal KL (nats)": fmt_se(kl, value(r, "marginal_kl_se"), 3) if kl is not None else "",
                "K": r.k,
                "test points": r.n_test,
                "paper log p(x) (nats)": fmt(paper),
                "paper (bits/dim)": fmt(bits_per_dim(paper, d), 4),
            }
        )
    table = pd.DataFrame(table)
    for column in ("I[n; z] (nats)", "marginal KL (nats)", "paper log p(x) (nats)", "paper (bits/dim)"):
        if column in table and (table[column] == "").all():
            table = table.drop(columns=column)  # "where present"
    return table


def leaderboard_markdown(records: pd.DataFrame, entries: dict, stale: list | None = None) -> str:
    """The leaderboard section's body: the conversion stated, then a table per dataset, and under it the models
    left out because their checkpoint changed after they were evaluated (``stale``: their records)."""
    stale = stale or []
    datasets = ordered_datasets([*records["dataset"], *(r.dataset for r in stale)])
    sizes = ", ".join(f"{d} {n}" for d, n in PIXELS.items())
    parts = [INTRO.format(pixels=sizes) + "\n"]
    for dataset in datasets:
        d = pixels(dataset, next((entries.get(m) for m in records.loc[records["dataset"] == dataset, "model"]), None))
        size = f"D = {d}" if d else "D unknown: no bits/dim"
        parts.append(f"\n### {dataset_title(dataset)} ({dataset}, {size})\n\n")
        table = leaderboard(records, entries, dataset)
        parts.append(markdown(table) if len(table) else "No current record.\n")
        ks, ns = set(table.get("K", [])), set(table.get("test points", []))
        if len(ks) > 1 or len(ns) > 1:
            parts.append(
                f"\nNot all rows share K ({', '.join(map(str, sorted(ks)))}) and test points "
                f"({', '.join(map(str, sorted(ns)))}): rank with care.\n"
            )
        left = [r for r in stale if r.dataset == dataset]
        if left:
            parts.append(
                "\nNot ranked, the checkpoint changed after evaluation (the stored numbers belong to "
                "weights that no longer exist): "
                + "; ".join(
                    f"{r.model} (stored log p(x) {r.log_likelihood:.2f}, K = {r.k}; run `vaebench eval {r.model}`)"
                    for r in left
                )
                + ".\n"
            )
    return "".join(parts)
