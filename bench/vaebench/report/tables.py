"""Tables (Markdown, the papers' shape) and plots (seaborn, PNG) from stored results and checkpoints."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from vaebench.core.metrics import qew_samples  # noqa: E402
from vaebench.protocol.files import atomic_path, atomic_write_text  # noqa: E402


def _published(entry, metric: str) -> float:
    return next((p.value for p in entry.published if p.metric == metric), math.nan)


def _epochs(entry) -> str:
    path = entry.history
    if not path.is_file():
        return ""
    info = json.loads(path.read_text())
    return f"{info['epochs']}" + ("" if info.get("finished") else " (not converged)")


def _fmt(value: float, digits: int = 2) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |\n| " + " | ".join("---" for _ in frame.columns) + " |\n"
    return header + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in frame.itertuples(index=False))


def load_per_example(records: pd.DataFrame, out: Path) -> dict[str, tuple[str | None, pd.Series]]:
    """Per-test-point L_K of every recorded model with a stored ``per_example`` file:
    {model: (dataset or None, L_K indexed by test_index)}. Read once per report."""
    values = {}
    for r in records.itertuples():
        path = out / "per_example" / f"{r.model}.csv.gz"
        if path.is_file():
            frame = pd.read_csv(path, index_col="test_index")
            column = next(c for c in frame.columns if c.startswith("L_"))
            values[r.model] = (getattr(r, "dataset", None), frame[column])
    return values


def whole_test_estimates(values: dict[str, tuple[str | None, pd.Series]]) -> dict[str, tuple[float, float, str]]:
    """For each model evaluated on a test subset of n of N points, its mean L_K over all N, estimated
    with a control variate: a model of the same dataset evaluated on all N points (same K),

        mean_N(ref) + mean_n(L - L_ref),  s.e. = sd_n(L - L_ref) / sqrt(n) * sqrt(1 - n / N)

    (the subset is a random sample without replacement). Of several references, the one with the
    smallest s.e. ``values``: :func:`load_per_example`. Returns {model: (estimate, s.e., reference)}."""
    estimates = {}
    for model, (dataset, bounds) in values.items():
        best = None
        for ref, (ref_dataset, ref_bounds) in values.items():
            if ref_dataset != dataset or bounds.name != ref_bounds.name or len(ref_bounds) <= len(bounds) \
                    or not bounds.index.isin(ref_bounds.index).all():
                continue
            n, total = len(bounds), len(ref_bounds)
            diff = bounds - ref_bounds.loc[bounds.index]
            se = diff.std() / math.sqrt(n) * math.sqrt(1 - n / total)
            if best is None or se < best[1]:
                best = (ref_bounds.mean() + diff.mean(), se, ref)
        if best is not None:
            estimates[model] = best
    return estimates


def likelihood_table(records: pd.DataFrame, entries: dict, group: str,
                     whole: dict[str, tuple[float, float, str]] | None = None) -> pd.DataFrame:
    """Our test log-likelihood next to the paper's: one row per model of ``group``. ``whole``
    (:func:`whole_test_estimates`) gives subset rows a whole-test-set estimate, which is then what
    "ours − paper" compares."""
    whole = whole or {}
    rows = []
    for r in records.itertuples():
        entry = entries.get(r.model)
        if entry is None or entry.section != group:
            continue
        paper = _published(entry, "log_likelihood")
        estimate = whole.get(r.model)
        ours = estimate[0] if estimate else r.log_likelihood
        rows.append({
            "model": r.model, "prior": entry.model.prior, "levels": entry.model.levels,
            "objective": f"{entry.train.objective} k={entry.train.k}",
            "log p(x) ± s.e.": f"{r.log_likelihood:.2f} ± {r.log_likelihood_se:.2f}", "K": r.k,
            "test points": r.n_test,
            "whole test set (estimate)": f"{estimate[0]:.2f} ± {estimate[1]:.2f} (via {estimate[2]})" if estimate else "",
            "ELBO": _fmt(r.elbo), "active units": r.active_units, "paper": _fmt(paper),
            "ours − paper": _fmt(ours - paper), "epochs": _epochs(entry),
        })
    return pd.DataFrame(rows)


def surgery_table(records: pd.DataFrame, entries: dict) -> pd.DataFrame:
    """ELBO-surgery terms by latent size, ours and the paper's (nats per training point)."""
    rows = []
    for r in records.itertuples():
        entry = entries.get(r.model)
        if entry is None or entry.section != "surgery":
            continue
        row = {"model": r.model, "z": entry.model.z_dim}
        for metric, ours in (("elbo", r.train_elbo), ("avg_kl", r.avg_kl), ("mutual_info", r.mutual_info),
                             ("marginal_kl", r.marginal_kl)):
            row[f"{metric} (ours)"] = _fmt(ours)
            row[f"{metric} (paper)"] = _fmt(_published(entry, metric))
        row["log N"] = _fmt(r.log_n)
        row["epochs"] = _epochs(entry)
        rows.append(row)
    return pd.DataFrame(rows)


def budget_table(entries: dict) -> pd.DataFrame:
    """Training budget per registry entry: epochs done, the paper's schedule, the median seconds per
    epoch measured while training here, and the hours the remaining epochs of that schedule would take
    at that rate (an upper bound where early stopping may end training sooner); entries never trained
    say so."""
    rows = []
    for entry in entries.values():
        cfg = entry.train
        stop = f", early stopping {cfg.patience}" if cfg.patience < cfg.max_epochs else ""
        schedule = f"{'up to ' if stop else ''}{cfg.max_epochs} epochs{stop}"
        path = entry.history
        if not path.is_file():
            rows.append({"model": entry.name, "epochs": 0, "schedule": schedule, "s / epoch here": "",
                         "device": "", "hours to finish here": "not trained"})
            continue
        info = json.loads(path.read_text())
        seconds = pd.Series([h["seconds"] for h in info["history"] if "seconds" in h]).median()
        remaining = 0 if info.get("finished") else cfg.max_epochs - info["epochs"]
        rows.append({"model": entry.name, "epochs": info["epochs"], "schedule": schedule,
                     "s / epoch here": _fmt(seconds, 1), "device": info.get("device", ""),
                     "hours to finish here": _fmt(remaining * seconds / 3600, 1)})
    return pd.DataFrame(rows)


def sources_table(entries: dict) -> pd.DataFrame:
    """Every published number the tables compare with: paper, table, metric, value and how it was checked."""
    return pd.DataFrame([{"model": entry.name, "paper": p.paper, "table": p.table, "metric": p.metric,
                          "value": _fmt(p.value), "note": p.note}
                         for entry in entries.values() for p in entry.published])


def speed_table(out: Path) -> pd.DataFrame:
    """``kernel_bench.csv`` (``python -m vaebench.studies.speed``), one row per device and timed path: ms per image and
    the ratios to the roofline and to the per-image patterns; empty if the file is missing."""
    path = out / "kernel_bench.csv"
    if not path.is_file():
        return pd.DataFrame()
    bench = pd.read_csv(path).dropna(subset=["ms_per_image"])
    columns = {"device_name": "device", "path": "path", "k": "K", "images": "images", "ms_per_image": "ms / image",
               "ratio_to_roofline": "× roofline", "fraction_of_fp32_peak": "of fp32 peak",
               "speedup_vs_per_image_lean": "vs lean loop", "speedup_vs_authors": "vs authors",
               "speedup_vs_pythae": "vs pythae", "max_abs_diff_vs_torch": "largest difference from torch (nats)"}
    table = bench[list(columns)].rename(columns=columns)
    for column in ("ms / image", "× roofline", "of fp32 peak", "vs lean loop", "vs authors", "vs pythae"):
        table[column] = table[column].map(lambda v: _fmt(v, 3 if v < 1 else 2))
    table["images"] = table["images"].astype("Int64")
    table["largest difference from torch (nats)"] = table["largest difference from torch (nats)"].map(
        lambda v: "" if pd.isna(v) else f"{v:.1e}")
    return table


def precision_table(out: Path, tolerance: float = 0.01) -> pd.DataFrame:
    """``precision.csv`` (``python -m vaebench.studies.precision``): each set-up's error against float64 and whether
    every image stays within ``tolerance`` nats; empty if the file is missing."""
    path = out / "precision.csv"
    if not path.is_file():
        return pd.DataFrame()
    runs = pd.read_csv(path).dropna(subset=["max_abs_error"])
    runs = runs[runs["setup"] != "float64"]
    return pd.DataFrame({
        "model": runs["model"], "set-up": runs["setup"], "images": runs["images"], "K": runs["k"],
        "mean error (nats)": runs["mean_error"].map(lambda v: f"{v:+.1e}"),
        "max per-image error (nats)": runs["max_abs_error"].map(lambda v: f"{v:.1e}"),
        f"within {tolerance} nats": runs["max_abs_error"].map(lambda v: "yes" if v < tolerance else "no"),
    })


def tiles_table(out: Path, fastest: int = 3) -> pd.DataFrame:
    """``tiles.csv`` (``python -m vaebench.studies.tiles``): per device, kernel and precision the ``fastest`` tile
    configurations, the committed one and the torch path, fastest first; empty if the file is missing."""
    path = out / "tiles.csv"
    if not path.is_file():
        return pd.DataFrame()
    runs = pd.read_csv(path).dropna(subset=["ms"]).sort_values("ms", kind="stable")
    rank = runs.groupby(["device_name", "kernel", "precision"]).cumcount()
    shown = runs[(rank < fastest) | runs["committed"].astype(bool) | (runs["precision"] == "torch")]
    shown = shown.sort_values(["device_name", "kernel", "ms"], kind="stable")
    tiles = shown.apply(lambda r: "" if r["precision"] == "torch" else
                        f"{r.block_m:.0f}x{r.block_n:.0f}x{r.block_k:.0f}, {r.num_warps:.0f} warps, {r.num_stages:.0f} stages",
                        axis=1)
    return pd.DataFrame({"device": shown["device_name"], "kernel": shown["kernel"], "precision": shown["precision"],
                         "tiles (M x N x K)": tiles, "committed": shown["committed"].map(lambda v: "yes" if v else ""),
                         "ms": shown["ms"].map(lambda v: f"{v:.3f}"), "TFLOP/s": shown["tflops"].map(lambda v: f"{v:.1f}"),
                         "largest error (nats)": shown["max_abs_error"].map(lambda v: f"{v:.1e}")})


def prior_ordering(records: pd.DataFrame, entries: dict, values: dict[str, tuple[str | None, pd.Series]]) -> str:
    """Whether the VAEs of each depth order as in the paper, VampPrior > MoG > standard (two-level:
    VampPrior > standard): the paired per-test-point differences of L_K (``values``:
    :func:`load_per_example`) between neighbours in that order, beyond 2 standard errors."""
    by_prior: dict[int, dict[str, str]] = {}
    for r in records.itertuples():
        entry = entries.get(r.model)
        if entry is not None and entry.section == "vampprior" and r.model in values:
            by_prior.setdefault(entry.model.levels, {}).setdefault(entry.model.prior, r.model)
    lines = []
    for levels, models in sorted(by_prior.items()):
        ranked = [prior for prior in ("vamp", "mog", "standard") if prior in models]
        verdicts = []
        for better, worse in zip(ranked, ranked[1:]):
            paired = values[models[better]][1].sub(values[models[worse]][1]).dropna()  # shared test points only
            if paired.empty:
                continue
            diff, se = paired.mean(), paired.std() / math.sqrt(len(paired))
            verdicts.append(f"{better} − {worse} = {diff:+.2f} ± {se:.2f} nats "
                            f"({'holds' if diff > 2 * se else 'not shown' if diff > 0 else 'reversed'}; "
                            f"{len(paired)} shared test points)")
        if verdicts:
            order = " > ".join({"vamp": "VampPrior", "mog": "MoG", "standard": "standard"}[p] for p in ranked)
            lines.append(f"Ordering of the paper, {levels}-level ({order}): " + "; ".join(verdicts) + ".")
    return "\n\n".join(lines)


def write_tables(records: pd.DataFrame, entries: dict, out: Path) -> Path:
    """``tables.md``: the VampPrior prior comparison, IWAE vs VAE, ELBO surgery, and the tiny models."""
    parts = [("# Results\n\nGenerated by `python run_bench.py report` from `results/records/`. "
              "log p(x) is the IWAE bound L_K averaged over the test points (± its standard error over "
              "test points); active units use the evaluated test points, population variance > 0.01. "
              "Differences are ours minus the paper's, in nats. On the whole static binarized MNIST test "
              "set the papers' test points are ours, so what separates the two numbers beyond training is "
              "only our Monte Carlo error (`log_likelihood_mc_se` in `metrics.csv`); on a subset, and for "
              "dynamically binarized MNIST (whose test set we binarize with our own fixed seed), the s.e. "
              "over test points applies too. A random test subset can be easier or harder than the whole "
              "set, so a row evaluated on a subset also gets a whole-test-set estimate where a model of the "
              "same data was evaluated on every point: that model's whole-set mean plus the paired "
              "difference on the subset (s.e. with the finite-population correction); \"ours − paper\" "
              "then uses the estimate.\n")]
    values = load_per_example(records, out)
    ordering = prior_ordering(records, entries, values)
    whole = whole_test_estimates(values)
    for title, table in (
        ("VampPrior paper, Table 1 (static binarized MNIST)", likelihood_table(records, entries, "vampprior", whole)),
        ("IWAE paper, Table 1 (MNIST, dynamic binarization, one stochastic layer)",
         likelihood_table(records, entries, "iwae", whole)),
        ("ELBO surgery (MNIST, standard prior; training-set terms)", surgery_table(records, entries)),
        ("Tiny models on scikit-learn digits (CI)", likelihood_table(records, entries, "tiny")),
        ("Training budget: ours and the papers'", budget_table(entries)),
        ("Speed of the evaluation (kernel_bench.csv)", speed_table(out)),
        ("Rounding error of L_K per arithmetic set-up, against float64 (precision.csv)", precision_table(out)),
        ("Tiles of the fused kernels (tiles.csv)", tiles_table(out)),
        ("Sources of the published numbers", sources_table(entries)),
    ):
        if title.startswith(("Speed", "Rounding", "Tiles")) and not len(table):
            continue
        parts.append(f"\n## {title}\n\n" + (_markdown(table) if len(table) else "No trained model yet.\n"))
        if title.startswith("VampPrior") and ordering:
            parts.append(f"\n{ordering}\n")
        if title.startswith("Speed"):
            parts.append("\nPer image, the median over interleaved rounds; × roofline: the time over the time the "
                         "decoder and mixture-prior FLOPs take at the matrix-multiply rate measured in the same run; "
                         "vs: how many times faster than that pattern on the same device (`python -m vaebench.studies.speed`).\n")
        if title.startswith("Rounding"):
            parts.append("\nSame seeded samples in every set-up. The protocol computes in float32 with "
                         "full-precision products: torch-fp32 by default, triton-ieee with --backend triton; "
                         "TF32 is not used.\n")
    path = out / "tables.md"
    atomic_write_text(path, "".join(parts))
    return path


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_bounds(records: pd.DataFrame, out: Path) -> None:
    """L_k against k (log scale) for every model: the bound tightening toward log p(x)."""
    ks = sorted(int(c[2:]) for c in records.columns if c.startswith("L_") and c[2:].isdigit())
    long = records.melt(id_vars="model", value_vars=[f"L_{k}" for k in ks], var_name="k", value_name="L_k").dropna()
    long["k"] = long["k"].str[2:].astype(int)
    long["L_k - L_1"] = long["L_k"] - long["model"].map(records.set_index("model")["L_1"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(long, x="k", y="L_k - L_1", hue="model", marker="o", ax=ax)
    ax.set(xscale="log", ylabel="L_k − L_1 (nats)", title="IWAE bound against k (gain over the ELBO)")
    ax.legend(fontsize=7, ncol=2)
    _save(fig, out / "bound_vs_k.png")


def plot_active_units(records: pd.DataFrame, entries: dict, out: Path) -> None:
    """Active units against the number of latent units, per model."""
    frame = records.assign(latent=[entries[m].model.z_dim * entries[m].model.levels if m in entries else math.nan
                                   for m in records.model])
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.barplot(frame, y="model", x="active_units_total", color="tab:blue", ax=ax, label="active")
    sns.barplot(frame, y="model", x="latent", color="tab:blue", alpha=0.25, ax=ax, label="latent units")
    ax.set(xlabel="units (active: variance of the posterior mean over test points > 0.01)", ylabel="")
    ax.legend()
    _save(fig, out / "active_units.png")


def plot_surgery(records: pd.DataFrame, out: Path) -> None:
    """Average KL as stacked bars: mutual information + marginal KL, per model."""
    frame = records.dropna(subset=["mutual_info"]).set_index("model")
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = sns.color_palette("deep", 2)
    ax.barh(frame.index, frame["mutual_info"], color=colors[0], label="mutual information I[i; z]")
    ax.barh(frame.index, frame["marginal_kl"], left=frame["mutual_info"], color=colors[1], label="KL(q(z) || p(z))")
    ax.scatter(frame["avg_kl"], frame.index, color="black", marker="|", s=200, label="average KL (analytic where it exists)", zorder=3)
    ax.set(xlabel="nats per training point", title="ELBO surgery: average KL = I + marginal KL")
    ax.legend(fontsize=8)
    _save(fig, out / "elbo_surgery.png")


@torch.no_grad()
def image_grids(name: str, model, data, out: Path, seed: int = 0) -> None:
    """Samples from p(x) and test reconstructions (Bernoulli means), plus VampPrior pseudo-inputs."""
    torch.manual_seed(seed)
    folder = out / "images"
    h, w = data.image_shape
    z = model.prior().sample((64,))
    with atomic_path(folder / f"{name}_samples.png") as tmp:
        save_image(model.likelihood(z).mean.reshape(-1, 1, h, w), tmp, nrow=8)
    x = data.test[:32]
    recon = model.likelihood(model.posterior(x).mean).mean
    pairs = torch.stack([x, recon], 1).reshape(-1, 1, h, w)
    with atomic_path(folder / f"{name}_reconstructions.png") as tmp:
        save_image(make_grid(pairs, nrow=16), tmp)
    pseudo = getattr(model, "pseudo_inputs", None)
    if pseudo is not None:
        with atomic_path(folder / f"{name}_pseudo_inputs.png") as tmp:
            save_image(pseudo[:100].reshape(-1, 1, h, w), tmp, nrow=10)


@torch.no_grad()
def plot_posterior_2d(name: str, model, data, out: Path, n_images: int = 4, k: int = 100, seed: int = 0) -> None:
    """For a 2-D latent model: q(z|x), the true posterior p(z|x) on a grid, and q_EW samples."""
    x = data.test[:n_images]
    q = model.posterior(x)
    samples = qew_samples(model, x, k, 300, seed=seed)  # [300, n, 2]
    fig, axes = plt.subplots(1, n_images, figsize=(4 * n_images, 4))
    for i, ax in enumerate(axes):
        loc, scale = q.base_dist.loc[i], q.base_dist.scale[i]
        lim = [(float(loc[j] - 6 * scale[j]), float(loc[j] + 6 * scale[j])) for j in range(2)]
        g0, g1 = torch.meshgrid(torch.linspace(*lim[0], 120), torch.linspace(*lim[1], 120), indexing="ij")
        grid = torch.stack([g0, g1], -1)  # [120, 120, 2]
        log_joint = model.likelihood(grid).log_prob(x[i]) + model.prior().log_prob(grid)
        true = torch.exp(log_joint - log_joint.max())
        approx = torch.exp(q.log_prob(grid[:, :, None, :])[..., i] - q.log_prob(loc[None])[i])
        ax.contour(g0, g1, true, levels=5, colors="black", linewidths=1)
        ax.contour(g0, g1, approx, levels=5, colors="tab:red", linewidths=1, linestyles="--")
        ax.scatter(samples[:, i, 0], samples[:, i, 1], s=3, alpha=0.4, color="tab:blue")
        ax.set(title=f"test image {i}", xlabel="z1", ylabel="z2")
    fig.suptitle(f"{name}: true posterior (black), q(z|x) (red dashed), q_EW samples k={k} (blue)")
    _save(fig, out / "posterior_2d.png")


def write_plots(records: pd.DataFrame, entries: dict, out: Path) -> None:
    sns.set_theme(style="whitegrid")
    plot_bounds(records, out)
    plot_active_units(records, entries, out)
    if "mutual_info" in records and records["mutual_info"].notna().any():
        plot_surgery(records, out)
