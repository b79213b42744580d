"""``vaebench.studies.speed.run``: which paths it times, and how rounds and ratios combine (timings scripted)."""

import itertools

import pandas as pd
import pytest
import torch

from vaebench.studies import speed

K = 100  # the smallest k the authors' chunking allows: every path runs in well under a second


@pytest.fixture
def scripted(monkeypatch):
    """Replace the clocks: every timed call takes the next of 1, 2, 3, ... seconds, and the GEMM rate
    of round r is r * 1e9 FLOP/s, so medians and ratios are known exactly."""
    clock = itertools.count(1)
    rates = itertools.count(1)
    monkeypatch.setattr(speed, "timed", lambda fn, device: (fn(), float(next(clock)), 0.0))
    monkeypatch.setattr(speed, "gemm_flops_per_s", lambda device: 1e9 * next(rates))


def test_rows_are_medians_over_interleaved_rounds(scripted, monkeypatch):
    # the compiled paths are timed like the others; their compilation is not what this test is about
    monkeypatch.setattr(speed, "compile_problem", lambda device: None)
    monkeypatch.setattr(speed, "ours", lambda model, x, k, backend, batch_size, *a, **kw: torch.zeros(len(x)))
    rows = {
        r["path"]: r for r in speed.run(torch.device("cpu"), images=2, k=K, authors_images=1, batch_size=2, rounds=3)
    }
    assert list(rows) == [
        "ours-torch",
        "ours-compiled",
        "ours-compiled-unseeded",
        "ours-triton",
        "ours-triton-tf32x3",
        "products-only",
        "per-image-lean",
        "authors-pattern",
        "pythae-pattern",
        "seeded-noise",
        "roofline",
    ]
    for path in ("ours-triton", "ours-triton-tf32x3"):
        assert "seconds" not in rows[path] and "compiled kernels on CUDA" in rows[path]["note"]
    # eight timed paths per round, in order: ours-torch takes 1, 9, 17 s; seeded-noise 8, 16, 24 s
    timed = ["ours-torch", "ours-compiled", "ours-compiled-unseeded", "products-only", "per-image-lean"]
    timed += ["authors-pattern", "pythae-pattern", "seeded-noise"]
    assert [rows[p]["seconds"] for p in timed] == [9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0]
    gemm = 2e9  # the median of 1e9, 2e9, 3e9
    flops = rows["roofline"]["flops_per_image"]
    assert rows["roofline"]["seconds"] == pytest.approx(2 * flops / gemm)
    assert rows["ours-torch"]["ms_per_image"] == pytest.approx(4500.0)
    assert rows["authors-pattern"]["ms_per_image"] == pytest.approx(14000.0)
    assert rows["ours-torch"]["speedup_vs_authors"] == pytest.approx(14000.0 / 4500.0)
    assert rows["ours-compiled"]["speedup_vs_per_image_lean"] == pytest.approx(13.0 / 10.0)
    assert rows["ours-compiled"]["ratio_to_unseeded"] == pytest.approx(10.0 / 11.0)
    assert rows["products-only"]["share_of_ours_compiled"] == pytest.approx(12.0 / 10.0)
    assert rows["seeded-noise"]["share_of_ours_compiled"] == pytest.approx(16.0 / 10.0)
    assert rows["ours-compiled"]["max_abs_diff_vs_torch"] == 0.0
    assert rows["ours-torch"]["ratio_to_roofline"] == pytest.approx(4500.0 / rows["roofline"]["ms_per_image"])
    assert rows["roofline"]["ratio_to_roofline"] == pytest.approx(1.0)
    assert rows["ours-torch"]["fraction_of_gemm_peak"] == pytest.approx(flops * 2 / 9.0 / gemm)
    assert rows["seeded-noise"]["flops_per_image"] is None and rows["seeded-noise"]["ms_per_image"] == 8000.0
    assert rows["ours-compiled"]["compile_seconds"] == 0.0  # the warm-up call took less than a timed one


def test_compiled_paths_are_skipped_with_the_reason(scripted, monkeypatch):
    monkeypatch.setattr(speed, "compile_problem", lambda device: "no C++ compiler found")
    rows = {
        r["path"]: r for r in speed.run(torch.device("cpu"), images=2, k=K, authors_images=1, batch_size=2, rounds=1)
    }
    for path in ("ours-compiled", "ours-compiled-unseeded"):
        assert "seconds" not in rows[path] and rows[path]["note"] == "skipped: no C++ compiler found"
    assert rows["ours-torch"]["seconds"] == 1.0


def test_csv_keeps_the_latest_run_of_each_device(tmp_path):
    path = tmp_path / "kernel_bench.csv"
    speed.write_csv([{"path": "ours-torch", "device": "cpu", "device_name": "EPYC", "seconds": 2.0}], path)
    speed.write_csv(
        [
            {"path": "ours-torch", "device": "cuda", "device_name": "H200", "seconds": 0.5},
            {"path": "roofline", "device": "cuda", "device_name": "H200", "seconds": 0.1},
        ],
        path,
    )
    speed.write_csv([{"path": "ours-torch", "device": "cuda", "device_name": "H100", "seconds": 0.6}], path)
    speed.write_csv([{"path": "ours-torch", "device": "cpu", "device_name": "EPYC", "seconds": 3.0}], path)
    table = pd.read_csv(path)
    assert list(table.columns) == speed.COLUMNS
    assert sorted(zip(table["device_name"], table["path"], table["seconds"])) == [
        ("EPYC", "ours-torch", 3.0),
        ("H100", "ours-torch", 0.6),
        ("H200", "ours-torch", 0.5),
        ("H200", "roofline", 0.1),
    ]


def test_products_only_does_the_roofline_products_at_the_evaluation_shapes(monkeypatch):
    """Every product products_only runs, counted: per image and sample they add up to flops_per_sample."""
    from vaebench.families.vae import VAE

    model = VAE(speed.VAMP_MNIST).eval()
    flops = []
    real_mm = torch.mm

    def counting_mm(a, b):
        flops.append(2 * a.shape[0] * a.shape[1] * b.shape[1])
        return real_mm(a, b)

    monkeypatch.setattr(torch, "mm", counting_mm)
    images, k = 3, 1000
    speed.products_only(model, torch.rand(images, 784).round(), k, batch_size=2)
    assert sum(flops) == pytest.approx(images * k * speed.flops_per_sample(model, k))
