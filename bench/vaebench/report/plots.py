"""Figures (seaborn, PNG) of the stored numbers: L_k against k, training curves, ELBO surgery, active units and
the paired differences of ``compare``. Each figure has a panel per dataset where models of several datasets meet."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from vaebench.protocol.files import atomic_path  # noqa: E402
from vaebench.report.format import dataset_title, missing, ordered_datasets, published  # noqa: E402

DPI = 110
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")
Z95 = 1.959963984540054


def theme() -> None:
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)


def save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def palette(n: int) -> list:
    """``n`` colours that stay apart: tab10 up to 10, else evenly spaced hues."""
    return sns.color_palette("tab10" if n <= 10 else "husl", n)


def model_colours(names) -> dict:
    """A colour per model, fixed by the sorted names, so a model keeps its colour from figure to figure."""
    ordered = sorted(set(names))
    return dict(zip(ordered, palette(len(ordered))))


def _ladder(records: pd.DataFrame) -> list[int]:
    return sorted(int(c[2:]) for c in records.columns if c.startswith("L_") and c[2:].isdigit())


def plot_bounds(records: pd.DataFrame, out: Path) -> Path:
    """``bound_vs_k.png``: L_k (nats per image) against k for every model, a panel per dataset, with ±1.96 Monte
    Carlo standard errors (``L_k_mc_se``) as error bars; each legend lists its models best first."""
    ks = _ladder(records)
    datasets = ordered_datasets(records["dataset"])
    fig, axes = plt.subplots(len(datasets), 1, figsize=(9.5, 3.9 * len(datasets)), squeeze=False)
    for ax, dataset in zip(axes[:, 0], datasets):
        rows = records[records["dataset"] == dataset].sort_values("log_likelihood", ascending=False)
        colours = model_colours(rows["model"])
        for r in rows.itertuples():
            row = r._asdict()
            points = [
                (k, row[f"L_{k}"], row.get(f"L_{k}_mc_se", math.nan)) for k in ks if not missing(row.get(f"L_{k}"))
            ]
            x, y, se = zip(*points)
            ax.errorbar(
                x,
                y,
                yerr=[Z95 * (0 if missing(s) else s) for s in se],
                color=colours[r.model],
                marker=MARKERS[sorted(colours).index(r.model) % len(MARKERS)],
                markersize=5,
                linewidth=1.5,
                capsize=3,
                label=f"{r.model} (K = {r.k}, {r.n_test} test points)",
            )
        used = sorted({k for k in ks if rows[f"L_{k}"].notna().any()})
        ax.set_xscale("log")
        ax.set_xticks(used, [str(k) for k in used])
        ax.minorticks_off()
        ax.set(
            xlabel="k, importance samples per test point (log scale)",
            ylabel="L_k (nats per image)",
            title=f"{dataset_title(dataset)} ({dataset})",
        )
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8.5,
            frameon=False,
            title="best log p(x) first",
            title_fontsize=8.5,
        )
    fig.suptitle(
        "IWAE bound L_k against k, test set averages; error bars: ±1.96 Monte Carlo s.e. "
        "(most are smaller than the markers)",
        fontsize=11,
    )
    fig.tight_layout()
    return save(fig, out / "bound_vs_k.png")


def _history(entry) -> pd.DataFrame | None:
    """Epoch and validation ELBO of an entry's training history (``checkpoint.json``), None without one."""
    path = entry.history
    if not path.is_file():
        return None
    try:
        history = json.loads(path.read_text()).get("history", [])
    except (OSError, ValueError, AttributeError):
        return None
    rows = [(h["epoch"], h["valid_elbo"]) for h in history if isinstance(h, dict) and "valid_elbo" in h]
    return pd.DataFrame(rows, columns=["epoch", "valid_elbo"]) if rows else None


def _ylim(values: list[pd.Series], low_quantile: float) -> tuple[float, float]:
    low = min(v.quantile(low_quantile) for v in values)
    high = max(v.max() for v in values)
    pad = (high - low) or 1.0
    return low - 0.04 * pad, high + 0.08 * pad


def plot_training_curves(entries: dict, out: Path, models=None) -> Path | None:
    """``training_curves.png``: validation ELBO per epoch of each registry entry of ``models`` (default: all) with a
    training history, a row per dataset: all epochs (the first few below the axis) and a zoom on the later ones; a
    dotted line where the KL warm-up ends (``train.warmup_epochs`` > 0). None if no entry has a history."""
    chosen = entries if models is None else {m: entries[m] for m in models if m in entries}
    curves = {name: h for name, e in chosen.items() if (h := _history(e)) is not None}
    if not curves:
        return None
    datasets = ordered_datasets(entries[n].dataset for n in curves)
    fig, axes = plt.subplots(
        len(datasets), 2, figsize=(14, 3.9 * len(datasets)), squeeze=False, gridspec_kw={"width_ratios": [1, 1]}
    )
    for (ax, zoom), dataset in zip(axes, datasets):
        names = sorted(
            (n for n in curves if entries[n].dataset == dataset), key=lambda n: -curves[n]["valid_elbo"].iloc[-1]
        )
        colours = model_colours(names)
        warmups: dict[int, list[str]] = {}
        last = max(int(curves[n]["epoch"].max()) for n in names)
        start = max(1, int(0.25 * last))
        for name in names:
            h = curves[name]
            for a in (ax, zoom):
                a.plot(
                    h["epoch"],
                    h["valid_elbo"],
                    color=colours[name],
                    linewidth=1.4,
                    label=f"{name} ({int(h['epoch'].max())} epochs)",
                )
            warmup = getattr(entries[name].train, "warmup_epochs", 0) or 0
            if 0 < warmup <= h["epoch"].max():
                warmups.setdefault(warmup, []).append(name)
        for epoch, which in sorted(warmups.items()):
            who = "all models" if len(which) == len(names) else ", ".join(which)
            for a in (ax, zoom):
                a.axvline(
                    epoch,
                    color="dimgrey",
                    linestyle=":",
                    linewidth=1.6,
                    label=f"end of the KL warm-up, epoch {epoch} ({who})" if a is zoom else None,
                )
        ax.set_ylim(*_ylim([curves[n]["valid_elbo"] for n in names], 0.03))
        later = [curves[n].loc[curves[n]["epoch"] >= start, "valid_elbo"] for n in names]
        zoom.set_ylim(*_ylim([v for v in later if len(v)] or [curves[n]["valid_elbo"] for n in names], 0.0))
        zoom.set_xlim(start, last + 0.02 * last)
        ax.set(
            xlabel="epoch",
            ylabel="validation ELBO (nats per image)",
            title=f"{dataset_title(dataset)}: all epochs (the first lie below the axis)",
        )
        zoom.set(xlabel="epoch", ylabel="", title=f"{dataset_title(dataset)}: from epoch {start} (zoom)")
        zoom.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8.5,
            frameon=False,
            title="best last epoch first",
            title_fontsize=8.5,
        )
    fig.suptitle("Training curves: ELBO on the validation split after each epoch (from checkpoint.json)", fontsize=11)
    fig.tight_layout()
    return save(fig, out / "training_curves.png")


def plot_surgery(records: pd.DataFrame, entries: dict, out: Path) -> Path | None:
    """``elbo_surgery.png``: mutual information I[n; z] and marginal KL(q(z) || p(z)) per model with ±1.96 Monte
    Carlo s.e., the paper's values where published, and log N (the most I[n; z] can be), a panel per dataset."""
    if "mutual_info" not in records or records["mutual_info"].isna().all():
        return None
    frame = records.dropna(subset=["mutual_info"])
    datasets = ordered_datasets(frame["dataset"])
    colours = sns.color_palette("deep", 3)
    fig, axes = plt.subplots(len(datasets), 1, figsize=(10.5, 4.3 * len(datasets)), squeeze=False)
    for ax, dataset in zip(axes[:, 0], datasets):
        rows = frame[frame["dataset"] == dataset].sort_values("model").reset_index(drop=True)
        x = range(len(rows))
        width = 0.38
        for shift, column, label, colour in (
            (-width / 2, "mutual_info", "mutual information I[n; z]", colours[0]),
            (width / 2, "marginal_kl", "marginal KL(q(z) ‖ p(z))", colours[1]),
        ):
            ax.bar(
                [i + shift for i in x],
                rows[column],
                width,
                color=colour,
                label=label,
                yerr=Z95 * rows[f"{column}_se"],
                capsize=4,
                error_kw={"linewidth": 1.2},
            )
            paper = [published(entries.get(m), column) for m in rows["model"]]
            if any(not math.isnan(p) for p in paper):
                ax.scatter(
                    [i + shift for i in x],
                    paper,
                    marker="D",
                    s=36,
                    color="black",
                    zorder=4,
                    label="the paper's value" if column == "mutual_info" else None,
                )
        for log_n in sorted(set(rows["log_n"].round(3))):
            ax.axhline(
                log_n,
                color=colours[2],
                linestyle="--",
                linewidth=1.5,
                label=f"log N = {log_n:.2f}: the most I[n; z] can be (N training points)",
            )
        ax.set_xticks(list(x), rows["model"], rotation=25, ha="right", rotation_mode="anchor")
        ax.grid(axis="x", visible=False)
        ax.set(
            ylabel="nats per training point", xlabel="", title=f"{dataset_title(dataset)} ({dataset}), training split"
        )
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False)
    fig.suptitle(
        "ELBO surgery: average KL(q(z|x) ‖ p(z)) = I[n; z] + KL(q(z) ‖ p(z)); error bars ±1.96 Monte Carlo s.e.",
        fontsize=11,
    )
    fig.tight_layout()
    return save(fig, out / "elbo_surgery.png")


def plot_active_units(records: pd.DataFrame, entries: dict, out: Path) -> Path:
    """``active_units.png``: active units (variance of the posterior mean over the test points > 0.01) against the
    latent size where the entry gives it, per model, grouped by dataset."""
    frame = records.assign(latent=[getattr(entries.get(m), "latent_dim", None) for m in records["model"]])
    frame["latent"] = pd.to_numeric(frame["latent"], errors="coerce")
    order = {d: i for i, d in enumerate(ordered_datasets(frame["dataset"]))}
    frame = frame.assign(_o=frame["dataset"].map(order)).sort_values(["_o", "model"])
    frame["label"] = frame["model"] + "  (" + frame["dataset"] + ")"
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(frame) + 1.4))
    ax.set_axisbelow(True)
    ax.grid(axis="y", visible=False)
    ax.barh(frame["label"], frame["latent"], color="#c6dbef", label="latent units (from the entry)")
    ax.barh(frame["label"], frame["active_units_total"], color="tab:blue", label="active units")
    for y, (a, z) in enumerate(zip(frame["active_units_total"], frame["latent"])):
        ax.text(
            max(a, 0 if math.isnan(z) else z) + 0.5,
            y,
            f"{a}" + ("" if math.isnan(z) else f" / {z:.0f}"),
            va="center",
            fontsize=8.5,
        )
    ax.invert_yaxis()
    ax.set(
        xlabel="units (active: variance over the test points of the posterior mean > 0.01)",
        ylabel="",
        title="Active latent units per model, evaluated test points",
    )
    ax.legend(loc="lower right", fontsize=8.5)
    return save(fig, out / "active_units.png")


def plot_comparison(table: pd.DataFrame, path: Path) -> Path:
    """The paired differences of ``compare`` (A − B per pair) with their 95% intervals, a panel per quantity."""
    theme()
    quantities = list(dict.fromkeys(table["quantity"]))
    pairs = list(dict.fromkeys(zip(table["A"], table["B"])))
    fig, axes = plt.subplots(
        1, len(quantities), figsize=(4.6 * len(quantities), 0.7 * len(pairs) + 2.2), squeeze=False, sharey=True
    )
    colours = {"differs": sns.color_palette("deep")[3]}
    for ax, quantity in zip(axes[0], quantities):
        rows = table[table["quantity"] == quantity].set_index(["A", "B"]).loc[pairs]
        y = range(len(pairs))
        for i, (_, r) in enumerate(rows.iterrows()):
            colour = colours.get(r["verdict"], "dimgrey")
            ax.errorbar(
                r["mean A − B (nats)"],
                i,
                xerr=[[r["mean A − B (nats)"] - r["95% low"]], [r["95% high"] - r["mean A − B (nats)"]]],
                fmt="o",
                color=colour,
                capsize=5,
                markersize=6,
                linewidth=1.6,
            )
            ax.annotate(
                f"{r['mean A − B (nats)']:+.2f} ± {r['s.e. (nats)']:.2f}\n{r['verdict']}",
                (r["mean A − B (nats)"], i),
                xytext=(0, 9),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
                color=colour,
            )
        ax.axvline(0, color="black", linewidth=1)
        low, high = min(rows["95% low"].min(), 0), max(rows["95% high"].max(), 0)
        pad = 0.25 * (high - low or 1.0)
        ax.set_xlim(low - pad, high + pad)
        ax.set_ylim(len(pairs) - 0.4, -0.7)
        ax.set_yticks(list(y), [f"{a} − {b}" for a, b in pairs])
        name = "gap L_K − ELBO" if quantity == "gap" else quantity
        ax.set(xlabel=f"difference of {name} (nats per image)", title=name)
    n = sorted(set(table["shared points"]))
    shared = f"{n[0]} shared test points" if len(n) == 1 else f"{n[0]}–{n[-1]} shared test points per pair"
    dataset = table.attrs.get("dataset", "")
    fig.suptitle(
        f"Paired differences A − B on {dataset_title(dataset)} ({shared}); bars: 95% intervals, mean ± 1.96 s.e.",
        fontsize=11,
    )
    fig.tight_layout()
    return save(fig, path)


def write_plots(records: pd.DataFrame, entries: dict, out: Path) -> list[Path]:
    """Every figure of the stored numbers (training curves: of the models with a record); the paths written."""
    theme()
    written = [
        plot_bounds(records, out),
        plot_training_curves(entries, out, list(records["model"])),
        plot_surgery(records, entries, out),
        plot_active_units(records, entries, out),
    ]
    return [p for p in written if p is not None]
