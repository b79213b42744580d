"""Tables of the studies' CSV files (``vaebench.studies``): evaluation speed, rounding error and kernel tiles.
Each is empty when its file is missing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vaebench.report.format import fmt


def speed_table(out: Path) -> pd.DataFrame:
    """``kernel_bench.csv`` (``python -m vaebench.studies.speed``), one row per device and timed path: ms per image
    and the ratios to the roofline and to the per-image patterns."""
    path = out / "kernel_bench.csv"
    if not path.is_file():
        return pd.DataFrame()
    bench = pd.read_csv(path).dropna(subset=["ms_per_image"])
    columns = {
        "device_name": "device",
        "path": "path",
        "k": "K",
        "images": "images",
        "ms_per_image": "ms / image",
        "ratio_to_roofline": "× roofline",
        "fraction_of_fp32_peak": "of fp32 peak",
        "speedup_vs_per_image_lean": "vs lean loop",
        "speedup_vs_authors": "vs authors",
        "speedup_vs_pythae": "vs pythae",
        "max_abs_diff_vs_torch": "largest difference from torch (nats)",
        "share_of_ours_compiled": "share of ours-compiled",
    }
    table = bench[[c for c in columns if c in bench]].rename(columns=columns)
    for column in ("ms / image", "× roofline", "of fp32 peak", "vs lean loop", "vs authors", "vs pythae"):
        table[column] = table[column].map(lambda v: fmt(v, 3 if v < 1 else 2))
    if "share of ours-compiled" in table:
        table["share of ours-compiled"] = table["share of ours-compiled"].map(
            lambda v: "" if pd.isna(v) else f"{v:.0%}"
        )
    table["images"] = table["images"].astype("Int64")
    table["largest difference from torch (nats)"] = table["largest difference from torch (nats)"].map(
        lambda v: "" if pd.isna(v) else f"{v:.1e}"
    )
    return table


def precision_table(out: Path, tolerance: float = 0.01) -> pd.DataFrame:
    """``precision.csv`` (``python -m vaebench.studies.precision``): each set-up's error against float64 and whether
    every image stays within ``tolerance`` nats."""
    path = out / "precision.csv"
    if not path.is_file():
        return pd.DataFrame()
    runs = pd.read_csv(path).dropna(subset=["max_abs_error"])
    runs = runs[runs["setup"] != "float64"]
    return pd.DataFrame(
        {
            "model": runs["model"],
            "set-up": runs["setup"],
            "images": runs["images"],
            "K": runs["k"],
            "mean error (nats)": runs["mean_error"].map(lambda v: f"{v:+.1e}"),
            "max per-image error (nats)": runs["max_abs_error"].map(lambda v: f"{v:.1e}"),
            f"within {tolerance} nats": runs["max_abs_error"].map(lambda v: "yes" if v < tolerance else "no"),
        }
    )


def tiles_table(out: Path, fastest: int = 3) -> pd.DataFrame:
    """``tiles.csv`` (``python -m vaebench.studies.tiles``): per device, kernel and precision the ``fastest`` tile
    configurations, the committed one and the torch path, fastest first."""
    path = out / "tiles.csv"
    if not path.is_file():
        return pd.DataFrame()
    runs = pd.read_csv(path).dropna(subset=["ms"]).sort_values("ms", kind="stable")
    rank = runs.groupby(["device_name", "kernel", "precision"]).cumcount()
    shown = runs[(rank < fastest) | runs["committed"].astype(bool) | (runs["precision"] == "torch")]
    shown = shown.sort_values(["device_name", "kernel", "ms"], kind="stable")
    tiles = shown.apply(
        lambda r: (
            ""
            if r["precision"] == "torch"
            else f"{r.block_m:.0f}x{r.block_n:.0f}x{r.block_k:.0f}, {r.num_warps:.0f} warps, {r.num_stages:.0f} stages"
        ),
        axis=1,
    )
    return pd.DataFrame(
        {
            "device": shown["device_name"],
            "kernel": shown["kernel"],
            "precision": shown["precision"],
            "tiles (M x N x K)": tiles,
            "committed": shown["committed"].map(lambda v: "yes" if v else ""),
            "ms": shown["ms"].map(lambda v: f"{v:.3f}"),
            "TFLOP/s": shown["tflops"].map(lambda v: f"{v:.1f}"),
            "largest error (nats)": shown["max_abs_error"].map(lambda v: f"{v:.1e}"),
        }
    )
