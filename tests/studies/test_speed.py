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


def test_rows_are_medians_over_interleaved_rounds(scripted):
    rows = {
        r["path"]: r for r in speed.run(torch.device("cpu"), images=2, k=K, authors_images=1, batch_size=2, rounds=3)
    }
    assert list(rows) == [
        "ours-torch",
        "ours-triton",
        "ours-triton-tf32x3",
        "per-image-lean",
        "authors-pattern",
        "pythae-pattern",
        "roofline",
    ]
    for path in ("ours-triton", "ours-triton-tf32x3"):
        assert "seconds" not in rows[path] and "compiled kernels on CUDA" in rows[path]["note"]
    # four timed paths per round, in order: ours-torch takes 1, 5, 9 s; pythae 4, 8, 12 s
    assert [rows[p]["seconds"] for p in ("ours-torch", "per-image-lean", "authors-pattern", "pythae-pattern")] == [
        5.0,
        6.0,
        7.0,
        8.0,
    ]
    gemm = 2e9  # the median of 1e9, 2e9, 3e9
    flops = rows["roofline"]["flops_per_image"]
    assert rows["roofline"]["seconds"] == pytest.approx(2 * flops / gemm)
    assert rows["ours-torch"]["ms_per_image"] == pytest.approx(2500.0)
    assert rows["authors-pattern"]["ms_per_image"] == pytest.approx(7000.0)
    assert rows["ours-torch"]["speedup_vs_authors"] == pytest.approx(7000.0 / 2500.0)
    assert rows["ours-torch"]["ratio_to_roofline"] == pytest.approx(2500.0 / rows["roofline"]["ms_per_image"])
    assert rows["roofline"]["ratio_to_roofline"] == pytest.approx(1.0)
    assert rows["ours-torch"]["fraction_of_gemm_peak"] == pytest.approx(flops * 2 / 5.0 / gemm)


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
