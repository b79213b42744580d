"""The report: leaderboard, bits per dimension, sections for outside models, per-example file damage, figures."""

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.report.test_compare import make_record, store
from vaebench import cli
from vaebench.families.vae import ModelConfig, build_model
from vaebench.protocol import registry
from vaebench.protocol.datasets import load_dataset
from vaebench.protocol.registry import Entry, Published
from vaebench.protocol.results import ResultsError, per_example_path, records_frame
from vaebench.protocol.train import TrainConfig
from vaebench.report.compare import compare_models
from vaebench.report.document import SECTIONS, Context, render
from vaebench.report.format import PIXELS, bits_per_dim, bits_per_dim_se, pixels
from vaebench.report.images import random_test_indices
from vaebench.report.leaderboard import leaderboard, leaderboard_markdown
from vaebench.report.per_example import load_per_example, read_per_example, whole_test_estimates
from vaebench.report.posterior import EDGE_MASS, _edge_mass, plot_posterior_2d, posterior_box
from vaebench.report.study_tables import precision_table, speed_table, tiles_table
from vaebench.report.tables import budget_table, likelihood_table, prior_ordering, sources_table, surgery_table


@pytest.fixture(scope="module")
def entries():
    return registry.load_registry([registry.builtin_registry()])


def outside_entry(tmp_path: Path, name: str = "my-factory-vae", section: str = "vampprior") -> Entry:
    """An outside entry: a factory model, no [train], asking for a paper section."""
    return Entry(
        name=name,
        dataset="binarized-mnist",
        source=tmp_path / name / "entry.toml",
        checkpoint=tmp_path / name / "checkpoint.pt",
        factory="model.py:build",
        settings={"z_dim": 32},
        section=section,
        published=(Published("Someone 2024", "Table 9", -80.0),),
    )


# leaderboard and bits per dimension


def test_leaderboard_ranks_every_model_of_a_dataset_including_unregistered_ones(entries):
    records = records_frame(
        [
            make_record("digits-standard", ll=-21.5, elbo=-22.0, active_units=3),
            make_record("my-outside-vae", ll=-19.0, elbo=-19.6, active_units=5),  # in no registry
            make_record("digits-vampprior", ll=-19.8, elbo=-20.3, active_units=4),
            make_record("vae-standard", dataset="binarized-mnist", ll=-87.7, elbo=-93.4),
        ]
    )
    table = leaderboard(records, entries, "digits")
    assert list(table["model"]) == ["my-outside-vae", "digits-vampprior", "digits-standard"]
    assert list(table["rank"]) == [1, 2, 3]
    assert list(table["source"]) == ["not in the registry", "built-in", "built-in"]
    assert list(table["active / latent units"]) == ["5 / ?", "4 / 4", "3 / 4"]
    assert table.loc[0, "log p(x) ± s.e. (nats)"] == "-19.00 ± 0.10" and table.loc[0, "ELBO (nats)"] == "-19.60"
    assert table.loc[0, "gap ± s.e. (nats)"] == "0.60 ± 0.05"
    assert list(table["K"]) == [100] * 3 and list(table["test points"]) == [50] * 3
    text = leaderboard_markdown(records, entries)
    for name in records["model"]:
        assert f"| {name} |" in text  # nothing evaluated is dropped
    assert text.index("### static binarized MNIST") < text.index("### scikit-learn 8x8 digits")
    paper = leaderboard(records, entries, "binarized-mnist").iloc[0]
    assert paper["paper log p(x) (nats)"] == "-88.56"  # the VampPrior paper's standard VAE
    assert paper["paper (bits/dim)"] == f"{88.56 / (784 * math.log(2)):.4f}"


def test_bits_per_dimension_are_exact(entries):
    from vaebench.protocol.datasets import DATASETS, FREY_FACES_SHAPE

    assert set(PIXELS) == set(DATASETS)  # every loadable dataset has its D
    assert PIXELS["frey-faces"] == math.prod(FREY_FACES_SHAPE) == 560 and PIXELS["digits"] == 64
    assert bits_per_dim(-50.0, 64) == 50.0 / (64 * math.log(2))
    assert bits_per_dim(-85.35, 784) == 85.35 / (784 * math.log(2))
    assert bits_per_dim_se(0.23, 784) == 0.23 / (784 * math.log(2))
    assert math.isnan(bits_per_dim(-50.0, None))
    assert pixels("digits") == 64 and pixels("mnist") == 784
    assert pixels("some-new-data", entries["digits-standard"]) == 64 and pixels("some-new-data") is None
    records = records_frame([make_record("a", ll=-50.0, elbo=-55.0, log_likelihood_se=0.5)])
    row = leaderboard(records, entries, "digits").iloc[0]
    d = 64 * math.log(2)
    assert row["bits/dim ± s.e."] == f"{50.0 / d:.4f} ± {0.5 / d:.4f}"
    assert row["ELBO (bits/dim)"] == f"{55.0 / d:.4f}"
    assert "bits/dim = −log p(x) / (D ln 2)" in leaderboard_markdown(records, entries)


def test_a_stale_record_is_listed_under_its_dataset_not_ranked(entries):
    records = records_frame([make_record("digits-vampprior")])
    text = leaderboard_markdown(records, entries, [make_record("digits-standard", ll=-21.25)])
    assert "| digits-standard |" not in text
    assert "Not ranked, the checkpoint changed after evaluation" in text
    assert "digits-standard (stored log p(x) -21.25, K = 100; run `vaebench eval digits-standard`)" in text


def test_outside_models_appear_in_the_leaderboard_only(tmp_path, entries):
    outside = outside_entry(tmp_path)
    both = {**entries, outside.name: outside}
    records = records_frame(
        [
            make_record(outside.name, dataset="binarized-mnist", ll=-84.0, elbo=-90.0),
            make_record("vae-standard", dataset="binarized-mnist", ll=-87.7, elbo=-93.4),
        ]
    )
    table = leaderboard(records, both, "binarized-mnist")
    assert list(table["model"]) == [outside.name, "vae-standard"]
    assert table.loc[0, "source"] == "outside (factory)" and table.loc[0, "active / latent units"] == "3 / 32"
    assert table.loc[0, "paper log p(x) (nats)"] == "-80.00"
    assert list(likelihood_table(records, both, "vampprior")["model"]) == ["vae-standard"]
    assert outside.name not in set(budget_table(both)["model"])
    assert surgery_table(records, {**both, outside.name: outside_entry(tmp_path, section="surgery")}).empty
    assert prior_ordering(records, both, {}) == ""
    text = render(Context(records=records, entries=both, out=tmp_path))
    assert text.count(f"| {outside.name} |") == 2  # the leaderboard and the sources of published numbers


def test_tables_md_has_the_explicit_sections_in_order_leaderboard_first(tmp_path, entries):
    records = records_frame([make_record("digits-standard"), make_record("digits-vampprior", ll=-19.0)])
    text = render(Context(records=records, entries=entries, out=tmp_path))
    titles = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert titles[0] == "Leaderboard" == SECTIONS[0].title
    assert titles == [s.title for s in SECTIONS if s.title in titles]  # the order of SECTIONS
    assert "Speed of the evaluation (kernel_bench.csv)" not in titles  # no kernel_bench.csv: left out
    assert "Tiny models on scikit-learn digits (CI)" in titles


# the whole report


def test_report_end_to_end_with_an_outside_model(tmp_path, entries):
    from vaebench.protocol.runner import evaluate_entries
    from vaebench.protocol.settings import Settings

    out = tmp_path / "results"
    evaluate_entries(
        [entries["digits-standard"], entries["digits-vampprior"]],
        Settings(k=10, n_test=60, surgery_samples=200),
        out,
        device="cpu",
        say=lambda s: None,
    )
    rng = np.random.default_rng(0)
    bound = rng.normal(-18, 2, 60)
    store(out, "one-off-model", random_test_indices(300, 60).numpy(), bound, bound - 1, k=10)
    assert cli.main(["report", "--out", str(out)]) == 0
    text = (out / "tables.md").read_text()
    assert text.split("\n## ")[1].startswith("Leaderboard")
    board = text.split("\n## ")[1]
    assert board.index("| one-off-model |") < board.index("| digits-vampprior |") < board.index("| digits-standard |")
    assert "| digits-vampprior | vamp | 1 |" in text  # the tiny models' section
    for name in (
        "metrics.csv",
        "bound_vs_k.png",
        "training_curves.png",
        "elbo_surgery.png",
        "active_units.png",
        "images/digits-vampprior_reconstructions.png",
        "images/digits-vampprior_samples.png",
        "images/digits-vampprior_pseudo_inputs.png",
        "images/digits-standard_reconstructions.png",
    ):
        assert (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert f"({name})" in text  # linked from tables.md
    assert not (out / "images" / "digits-standard_pseudo_inputs.png").exists()
    assert not list(out.glob("posterior_2d*.png"))  # no 2-D model
    assert "one-off-model" in pd.read_csv(out / "metrics.csv")["model"].tolist()


# per-example files


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode())


VALID = "test_index,L_100,elbo\n" + "".join(f"{i},-20.{i},-21.{i}\n" for i in range(5))
DAMAGE = {
    "truncated": (_gz(VALID * 200)[:60], "truncated"),
    "empty file": (b"", "empty"),
    "empty gzip": (_gz(""), "empty"),
    "no columns we know": (_gz("a,b\n1,2\n"), "no column test_index, L_<K>, elbo; it has a, b"),
    "no bound column": (_gz("test_index,elbo\n0,1\n"), "no column L_<K>"),
    "header only": (_gz("test_index,L_100,elbo\n"), "a header without rows"),
    "not a number": (_gz("test_index,L_100,elbo\n0,-20,-21\n1,abc,-21\n"), "line 3, column L_100: 'abc' is not"),
    "missing value": (_gz("test_index,L_100,elbo\n0,-20,\n"), "line 2, column elbo"),
    "not gzip": (VALID.encode(), "unreadable"),
    "a point twice": (_gz("test_index,L_100,elbo\n3,-20,-21\n3,-20,-21\n"), "test point 3 appears twice"),
    "other K": (_gz(VALID.replace("L_100", "L_50")), "it holds L_50, but the record was made with K = 100"),
    "fewer points than the record": (_gz(VALID.split("4,")[0]), "4 test points, but the record says 5"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_per_example_file_names_the_file_and_the_fix(tmp_path, case):
    content, why = DAMAGE[case]
    record = store(tmp_path, "m", range(5), np.full(5, -20.0), np.full(5, -21.0))
    path = per_example_path(tmp_path, "m")
    path.write_bytes(content)
    with pytest.raises(ResultsError) as err:
        read_per_example(tmp_path, "m", record, need_elbo=True)
    message = str(err.value)
    assert message.startswith(f"{path} is damaged (") and why in message, message
    # the rerun writes to the folder the damaged file is in, never silently to the default results/
    assert message.endswith(f"delete it and run `vaebench eval m --force --out {tmp_path} --k 100 --n-test 5` again")


def test_damaged_per_example_files_stop_compare_and_report_with_exit_2(tmp_path, capsys):
    store(tmp_path, "m", range(5), np.full(5, -20.0), np.full(5, -21.0))
    store(tmp_path, "n", range(5), np.full(5, -20.0), np.full(5, -21.0))
    per_example_path(tmp_path, "m").write_bytes(DAMAGE["truncated"][0])
    with pytest.raises(ResultsError, match="m.csv.gz is damaged"):
        compare_models(tmp_path, ["m", "n"])
    assert cli.main(["report", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {per_example_path(tmp_path, 'm')} is damaged (truncated") and "Traceback" not in err
    per_example_path(tmp_path, "m").unlink()
    with pytest.raises(ResultsError, match=r"m.csv.gz is missing .*run `vaebench eval m --force"):
        compare_models(tmp_path, ["m", "n"])


# figures drawn from a model


def test_posterior_2d_grid_holds_the_whole_true_posterior(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(x_dim=64, z_dim=2, hidden=8, depth=1)).eval()
    data = load_dataset("digits")
    start = torch.tensor([[-0.01, 0.01], [-0.01, 0.01]])  # far too small: the grid must grow
    _, _, p, box = posterior_box(model, data.test[0], start)
    assert _edge_mass(p) < EDGE_MASS
    assert (box[:, 1] - box[:, 0] > 1.0).all()  # near the N(0, I) prior of an untrained decoder
    assert p.sum().item() == pytest.approx(1.0)
    path = plot_posterior_2d("tiny-2d", model, data, tmp_path, n_images=2, k=10)
    assert path == tmp_path / "posterior_2d_tiny-2d.png" and path.stat().st_size > 0


def test_image_grids_use_a_fixed_random_sample_of_test_images():
    index = random_test_indices(10_000, 16)
    assert torch.equal(index, random_test_indices(10_000, 16))  # seeded
    assert not torch.equal(index, torch.arange(16)) and index.max() > 1000  # not the (digit-sorted) first images
    assert torch.equal(index, index.sort().values) and len(set(index.tolist())) == 16


# the papers' tables (ported from the tests before the rework)


def _per_example(folder: Path, name: str, index, values) -> None:
    pd.DataFrame({"test_index": np.asarray(index), "L_5000": np.asarray(values)}).to_csv(
        folder / f"{name}.csv.gz", index=False
    )


def test_prior_ordering_uses_paired_differences_over_shared_points(tmp_path, entries):
    folder = tmp_path / "per_example"
    folder.mkdir()
    base = np.linspace(-120, -80, 60)  # a large spread across test points
    subsets = {"vae-standard": np.arange(0, 50), "vae-mog": np.arange(59, 9, -1), "vae-vampprior": np.arange(5, 60)}
    for name, shift in (("vae-standard", 0.0), ("vae-mog", 0.05), ("vae-vampprior", -0.05)):
        _per_example(folder, name, subsets[name], base[subsets[name]] + shift)
    _per_example(folder, "hvae-vampprior", range(60), base + 2.0)
    records = pd.DataFrame({"model": ["vae-standard", "vae-mog", "vae-vampprior", "hvae-vampprior"]})
    text = prior_ordering(records, entries, load_per_example(records, tmp_path))
    assert text.startswith("Ordering of the paper, 1-level (VampPrior > MoG > standard): ")
    assert "2-level" not in text  # one two-level model: nothing to compare
    _per_example(folder, "hvae-standard", range(60), base + 0.5)
    records = pd.concat([records, pd.DataFrame({"model": ["hvae-standard"]})])
    text = prior_ordering(records, entries, load_per_example(records, tmp_path))
    assert text.endswith(
        "\n\nOrdering of the paper, 2-level (VampPrior > standard): "
        "vamp − standard = +1.50 ± 0.00 nats (holds; 60 shared test points)."
    )
    assert "vamp − mog = -0.10 ± 0.00 nats (reversed; 50 shared test points)" in text
    assert "mog − standard = +0.05 ± 0.00 nats (holds; 40 shared test points)" in text


def test_whole_test_set_estimate_from_a_subset_uses_the_best_paired_reference(tmp_path):
    folder = tmp_path / "per_example"
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = -100 + 10 * rng.normal(size=200)
    subset = np.sort(rng.permutation(200)[:50])
    noise = rng.normal(size=50)
    values = {
        "full-a": (np.arange(200), base),
        "full-b": (np.arange(200), base + 3.0 * rng.normal(size=200)),
        "sub": (subset, base[subset] + 0.5 + 0.1 * noise),
        "other-data": (np.arange(200), base),
    }
    for name, (index, v) in values.items():
        _per_example(folder, name, index, v)
    records = pd.DataFrame({"model": list(values), "k": 5000, "dataset": ["d", "d", "d", "e"]})
    estimates = whole_test_estimates(load_per_example(records, tmp_path))
    assert set(estimates) == {"sub"}
    estimate, se, ref = estimates["sub"]
    diff = 0.5 + 0.1 * noise
    assert ref == "full-a"
    assert estimate == pytest.approx(base.mean() + diff.mean(), abs=1e-5)
    assert se == pytest.approx(diff.std(ddof=1) / math.sqrt(50) * math.sqrt(1 - 50 / 200), rel=1e-4)


def test_budget_table_states_the_time_left_at_the_measured_rate(tmp_path):
    cfg = TrainConfig(max_epochs=2000, patience=50)
    trained = Entry(
        name="trained",
        dataset="digits",
        source=tmp_path / "trained" / "entry.toml",
        checkpoint=tmp_path / "trained" / "checkpoint.pt",
        model=ModelConfig(),
        train=cfg,
    )
    untrained = Entry(
        name="untrained",
        dataset="digits",
        source=tmp_path / "untrained" / "entry.toml",
        checkpoint=tmp_path / "untrained" / "checkpoint.pt",
        model=ModelConfig(),
        train=cfg,
    )
    history = [{"epoch": e, "seconds": s} for e, s in ((1, 7.0), (2, 9.0), (3, 8.0))]
    history.append({"epoch": 3, "event": "warm restart from the best checkpoint"})
    trained.history.parent.mkdir(parents=True)
    trained.history.write_text(json.dumps({"epochs": 3, "finished": False, "device": "cpu", "history": history}))
    table = budget_table({e.name: e for e in (trained, untrained, outside_entry(tmp_path))}).set_index("model")
    assert list(table.index) == ["trained", "untrained"]  # the outside entry has no [train]
    assert table.loc["untrained", "hours to finish here"] == "not trained"
    row = table.loc["trained"]
    assert row["epochs"] == 3 and row["schedule"] == "up to 2000 epochs, early stopping 50"
    assert row["s / epoch here"] == "8.0"
    assert row["hours to finish here"] == f"{(2000 - 3) * 8.0 / 3600:.1f}"


def test_sources_table_lists_every_published_number(entries):
    table = sources_table(entries)
    published = [(e.name, p.metric, p.value) for e in entries.values() for p in e.published]
    assert list(zip(table.model, table.metric, table.value.astype(float))) == published


def test_speed_precision_and_tiles_tables_read_their_csvs(tmp_path):
    assert speed_table(tmp_path).empty and precision_table(tmp_path).empty and tiles_table(tmp_path).empty
    pd.DataFrame(
        [
            {
                "path": "ours-torch",
                "device_name": "GPU",
                "k": 5000,
                "images": 10,
                "ms_per_image": 0.5,
                "ratio_to_roofline": 1.25,
                "fraction_of_fp32_peak": 0.4,
                "speedup_vs_per_image_lean": 2.0,
                "speedup_vs_authors": 100.0,
                "speedup_vs_pythae": 6.0,
                "max_abs_diff_vs_torch": None,
            },
            {"path": "ours-triton", "device_name": "CPU", "images": None, "ms_per_image": None},  # skipped path
        ]
    ).to_csv(tmp_path / "kernel_bench.csv", index=False)
    speed = speed_table(tmp_path)
    assert list(speed["path"]) == ["ours-torch"] and speed.iloc[0]["× roofline"] == "1.25"
    pd.DataFrame(
        [
            {"model": "m", "setup": "float64", "images": 5, "k": 50, "mean_error": 0.0, "max_abs_error": 0.0},
            {"model": "m", "setup": "torch-fp32", "images": 5, "k": 50, "mean_error": 1e-6, "max_abs_error": 2e-5},
            {"model": "m", "setup": "triton-tf32", "images": 5, "k": 50, "mean_error": -0.08, "max_abs_error": 1.9},
        ]
    ).to_csv(tmp_path / "precision.csv", index=False)
    table = precision_table(tmp_path)
    assert list(zip(table["set-up"], table["within 0.01 nats"])) == [("torch-fp32", "yes"), ("triton-tf32", "no")]
    tile = {
        "device_name": "GPU",
        "kernel": "mixture",
        "precision": "ieee",
        "block_m": 64,
        "block_n": 64,
        "block_k": 32,
        "num_warps": 4,
        "num_stages": 3,
        "tflops": 1.0,
        "max_abs_error": 1e-6,
    }
    pd.DataFrame(
        [
            {**tile, "precision": "torch", "committed": False, "ms": 2.5},
            *({**tile, "committed": i == 4, "ms": 1.0 + i, "block_m": 16 * (i + 1)} for i in range(5)),
        ]
    ).to_csv(tmp_path / "tiles.csv", index=False)
    shown = tiles_table(tmp_path, fastest=2)
    assert list(shown["ms"]) == ["1.000", "2.000", "2.500", "5.000"]
    assert shown.iloc[0]["tiles (M x N x K)"] == "16x64x32, 4 warps, 3 stages"
