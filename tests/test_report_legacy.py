"""Report tests from before the report rework: to be adapted to the new report modules."""

import json
import math
from dataclasses import replace

import pytest
import torch

from vaebench import cli
from vaebench.core.estimators import iwae_bound
from vaebench.core.interface import LatentVariableModel
from vaebench.protocol import registry
from vaebench.families.vae import build_model


def test_report_writes_tables_and_plots(tmp_path):
    out = tmp_path / "results"
    assert cli.main(["eval", "digits-vampprior", "--k", "50", "--out", str(out)]) == 0
    assert cli.main(["report", "--out", str(out)]) == 0
    table = (out / "tables.md").read_text()
    assert "| digits-vampprior | vamp | 1 |" in table
    for name in ("bound_vs_k.png", "active_units.png", "elbo_surgery.png", "metrics.csv",
                 "images/digits-vampprior_samples.png", "images/digits-vampprior_pseudo_inputs.png"):
        assert (out / name).stat().st_size > 0, name


def test_posterior_2d_plot(tmp_path):
    from vaebench.protocol.datasets import load_dataset
    from vaebench.report.tables import plot_posterior_2d
    from vaebench.families.vae import ModelConfig

    model = build_model(ModelConfig(x_dim=64, z_dim=2, hidden=8, depth=1)).eval()
    plot_posterior_2d("tiny-2d", model, load_dataset("digits"), tmp_path, n_images=2, k=10)
    assert (tmp_path / "posterior_2d.png").stat().st_size > 0


def test_prior_ordering_uses_paired_differences(tmp_path):
    import pandas as pd

    from vaebench.report.tables import load_per_example, prior_ordering

    folder = tmp_path / "per_example"
    folder.mkdir()
    base = torch.linspace(-120, -80, 60, dtype=torch.float64)  # a large spread across test points
    # the three models saw overlapping, differently ordered subsets of the test points
    subsets = {"vae-standard": torch.arange(0, 50), "vae-mog": torch.arange(59, 9, -1),
               "vae-vampprior": torch.arange(5, 60)}
    for name, shift in (("vae-standard", 0.0), ("vae-mog", 0.05), ("vae-vampprior", -0.05)):
        index = subsets[name]
        pd.DataFrame({"test_index": index.numpy(), "L_5000": (base[index] + shift).numpy()}).to_csv(
            folder / f"{name}.csv.gz", index=False)
    pd.DataFrame({"test_index": range(60), "L_5000": (base + 2.0).numpy()}).to_csv(
        folder / "hvae-vampprior.csv.gz", index=False)
    records = pd.DataFrame({"model": ["vae-standard", "vae-mog", "vae-vampprior", "hvae-vampprior"]})
    text = prior_ordering(records, registry.REGISTRY, load_per_example(records, tmp_path))
    assert text.startswith("Ordering of the paper, 1-level (VampPrior > MoG > standard): ")
    assert "2-level" not in text  # one two-level model: nothing to compare
    pd.DataFrame({"test_index": range(60), "L_5000": (base + 0.5).numpy()}).to_csv(folder / "hvae-standard.csv.gz", index=False)
    records = pd.concat([records, pd.DataFrame({"model": ["hvae-standard"]})])
    text = prior_ordering(records, registry.REGISTRY, load_per_example(records, tmp_path))
    assert text.endswith("\n\nOrdering of the paper, 2-level (VampPrior > standard): "
                         "vamp − standard = +1.50 ± 0.00 nats (holds; 60 shared test points).")
    # identical values per test point up to constant shifts: the paired s.e. is ~0, so 0.05 nats is
    # resolved, and only the shared points count (vamp/mog share 10..59, mog/standard 10..49)
    assert "vamp − mog = -0.10 ± 0.00 nats (reversed; 50 shared test points)" in text
    assert "mog − standard = +0.05 ± 0.00 nats (holds; 40 shared test points)" in text


def test_whole_test_set_estimate_from_a_subset_uses_the_best_paired_reference(tmp_path):
    import pandas as pd

    from vaebench.report.tables import load_per_example, whole_test_estimates

    folder = tmp_path / "per_example"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    base = -100 + 10 * torch.randn(200, generator=gen, dtype=torch.float64)
    subset = torch.randperm(200, generator=gen)[:50].sort().values
    noise = torch.randn(50, generator=gen, dtype=torch.float64)
    values = {"full-a": (torch.arange(200), base), "full-b": (torch.arange(200), base + 3.0 * torch.randn(
        200, generator=gen, dtype=torch.float64)), "sub": (subset, base[subset] + 0.5 + 0.1 * noise),
        "other-data": (torch.arange(200), base)}
    for name, (index, v) in values.items():
        pd.DataFrame({"test_index": index.numpy(), "L_5000": v.numpy()}).to_csv(folder / f"{name}.csv.gz", index=False)
    records = pd.DataFrame({"model": list(values), "k": 5000, "dataset": ["d", "d", "d", "e"]})
    estimates = whole_test_estimates(load_per_example(records, tmp_path))
    assert set(estimates) == {"sub"}  # only subset rows with a same-data reference on more points
    estimate, se, ref = estimates["sub"]
    diff = 0.5 + 0.1 * noise  # sub - full-a on the subset, exactly
    assert ref == "full-a"  # its paired differences vary least
    assert estimate == pytest.approx(float(base.mean() + diff.mean()), abs=1e-9)
    assert se == pytest.approx(float(diff.std() / math.sqrt(50) * math.sqrt(1 - 50 / 200)), rel=1e-9)


def test_budget_table_states_the_time_left_at_the_measured_rate(tmp_path, monkeypatch):
    from vaebench.report.tables import budget_table

    monkeypatch.setattr(registry, "CHECKPOINTS", tmp_path)
    entry = registry.get("vae-standard")  # up to 2000 epochs, early stopping 50
    history = [{"epoch": e, "seconds": s} for e, s in ((1, 7.0), (2, 9.0), (3, 8.0))]
    history.append({"epoch": 3, "event": "warm restart from the best checkpoint"})
    (tmp_path / "vae-standard.json").write_text(json.dumps({"epochs": 3, "finished": False, "device": "cpu",
                                                            "history": history}))
    table = budget_table(registry.REGISTRY).set_index("model")
    assert list(table.index) == list(registry.REGISTRY)  # every entry, trained or not
    assert table.loc["vae-mog", "hours to finish here"] == "not trained" and table.loc["vae-mog", "epochs"] == 0
    row = table.loc["vae-standard"]
    assert row["epochs"] == 3 and row["schedule"] == "up to 2000 epochs, early stopping 50"
    assert row["s / epoch here"] == "8.0"  # the median of the timed epochs
    assert row["hours to finish here"] == f"{(entry.train.max_epochs - 3) * 8.0 / 3600:.1f}"


def test_sources_table_lists_every_published_number_with_its_note():
    from vaebench.report.tables import sources_table

    table = sources_table(registry.REGISTRY)
    published = [(e.name, p.metric, p.value) for e in registry.REGISTRY.values() for p in e.published]
    assert list(zip(table.model, table.metric, table.value.astype(float))) == published
    vamp = table[table.model == "vae-vampprior"].iloc[0]
    assert vamp.value == "-85.57" and "pythae" in vamp.note


def test_speed_precision_and_tiles_tables_read_their_csvs(tmp_path):
    import pandas as pd

    from vaebench.report.tables import precision_table, speed_table, tiles_table

    assert speed_table(tmp_path).empty and precision_table(tmp_path).empty and tiles_table(tmp_path).empty
    pd.DataFrame([
        {"path": "ours-torch", "device_name": "GPU", "k": 5000, "images": 10, "ms_per_image": 0.5, "ratio_to_roofline": 1.25,
         "fraction_of_fp32_peak": 0.4, "speedup_vs_per_image_lean": 2.0, "speedup_vs_authors": 100.0,
         "speedup_vs_pythae": 6.0, "max_abs_diff_vs_torch": None},
        {"path": "ours-triton", "device_name": "CPU", "images": None, "ms_per_image": None},  # skipped path
    ]).to_csv(tmp_path / "kernel_bench.csv", index=False)
    speed = speed_table(tmp_path)
    assert list(speed["path"]) == ["ours-torch"] and speed.iloc[0]["× roofline"] == "1.25"
    pd.DataFrame([
        {"model": "m", "setup": "float64", "images": 5, "k": 50, "mean_error": 0.0, "max_abs_error": 0.0},
        {"model": "m", "setup": "torch-fp32", "images": 5, "k": 50, "mean_error": 1e-6, "max_abs_error": 2e-5},
        {"model": "m", "setup": "triton-tf32", "images": 5, "k": 50, "mean_error": -0.08, "max_abs_error": 1.9},
        {"model": "m", "setup": "torch-tf32", "images": 5, "k": 50, "note": "skipped"},
    ]).to_csv(tmp_path / "precision.csv", index=False)
    table = precision_table(tmp_path)
    assert list(zip(table["set-up"], table["within 0.01 nats"])) == [("torch-fp32", "yes"), ("triton-tf32", "no")]
    tile = {"device_name": "GPU", "kernel": "mixture", "precision": "ieee", "block_m": 64, "block_n": 64, "block_k": 32,
            "num_warps": 4, "num_stages": 3, "tflops": 1.0, "max_abs_error": 1e-6}
    pd.DataFrame([{**tile, "precision": "torch", "committed": False, "ms": 2.5},
                  *({**tile, "committed": i == 4, "ms": 1.0 + i, "block_m": 16 * (i + 1)} for i in range(5)),
                  {**tile, "committed": False, "note": "failed: OutOfResources"}]).to_csv(tmp_path / "tiles.csv", index=False)
    shown = tiles_table(tmp_path, fastest=2)
    assert list(shown["ms"]) == ["1.000", "2.000", "2.500", "5.000"]
    assert list(shown["precision"]) == ["ieee", "ieee", "torch", "ieee"] and list(shown["committed"]) == ["", "", "", "yes"]
    assert shown.iloc[0]["tiles (M x N x K)"] == "16x64x32, 4 warps, 3 stages" and shown.iloc[2]["tiles (M x N x K)"] == ""

