"""``vaebench.studies.precision``: per-image rounding error of L_K against float64 with the same seeded samples."""

import pandas as pd
import pytest
import torch

from vaebench.core import kernels
from vaebench.families.vae import ModelConfig, build_model
from vaebench.studies import precision


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(x_dim=64, z_dim=4, hidden=32, depth=2, net="gated", prior="vamp", n_components=5)
    ).eval()
    x = (torch.rand(12, 64) < 0.3).float()
    return model, x, torch.arange(100, 112)


def test_float32_paths_are_within_the_kernel_tolerance_of_float64(model_and_data):
    model, x, ids = model_and_data
    rows = {r["setup"]: r for r in precision.measure("tiny", model, x, ids, k=40)}
    assert list(rows) == list(precision.SETUPS)
    assert rows["float64"]["max_abs_error"] == 0.0
    measured = [s for s in precision.SETUPS if "note" not in rows[s]]
    interpreted = kernels.triton_problem() is None and kernels.interpreted()
    assert "torch-fp32" in measured and ("triton-ieee" in measured) == interpreted  # CPU data: interpreter only
    for setup in measured[1:]:
        # float32 rounding is ~1e-7 relative: far inside the 1e-3 nats per image, and not exactly zero
        assert 0.0 < rows[setup]["max_abs_error"] < 1e-3
        assert abs(rows[setup]["mean_ll"] - rows["float64"]["mean_ll"]) < 1e-3
    assert all("TF32 needs CUDA" in rows[s]["note"] for s in ("torch-tf32", "triton-tf32x3", "triton-tf32"))


def test_error_is_measured_against_the_same_samples(model_and_data):
    """A different seed shifts every image by Monte Carlo noise (~0.01-1 nats at k = 40), far above rounding:
    the float32 set-up is compared with float64 on identical samples, or its error would be that large."""
    model, x, ids = model_and_data
    same = precision.bounds(model, x, ids, 40, "torch-fp32") - precision.bounds(model, x, ids, 40, "float64")
    other = precision.bounds(model, x, ids + 1000, 40, "torch-fp32") - precision.bounds(model, x, ids, 40, "float64")
    assert same.abs().max() < 1e-4 < other.abs().max()


def test_arithmetic_switches_torch_tf32_and_restores():
    before = torch.get_float32_matmul_precision()
    with precision.arithmetic("torch-tf32"):
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
    for setup in ("torch-fp32", "triton-tf32"):  # the kernels' precision is an argument, not torch's switch
        with precision.arithmetic(setup):
            assert torch.get_float32_matmul_precision() == before
    with pytest.raises(RuntimeError, match="inside"), precision.arithmetic("torch-tf32"):
        raise RuntimeError("inside")
    assert torch.get_float32_matmul_precision() == before  # restored on errors too
    with pytest.raises(ValueError, match="unknown set-up"):
        precision.skip_reason("torch-bf16", torch.device("cpu"))


def test_kernel_options_of_each_setup():
    assert precision.kernel_options("triton-tf32") == kernels.KernelOptions(precision="tf32")
    assert precision.kernel_options("triton-tf32x3").precision == "tf32x3"
    assert precision.kernel_options("triton-ieee") == kernels.DEFAULT_OPTIONS
    assert precision.kernel_options("torch-tf32") == precision.kernel_options("float64") == kernels.DEFAULT_OPTIONS
    assert precision.kernel_options("triton-tf32").bernoulli == kernels.BERNOULLI_TILES  # committed tiles
    with pytest.raises(ValueError, match="unknown set-up"):
        precision.kernel_options("triton-bf16")
    with pytest.raises(ValueError, match="unknown dot precision"):
        kernels.KernelOptions(precision="bf16")


def test_bounds_pass_the_setup_to_iwae_bound(model_and_data, monkeypatch):
    """Each set-up reaches iwae_bound as its backend and kernel options; nothing global is switched."""
    model, x, ids = model_and_data
    calls = []

    def spy(model, x, k, **kwargs):
        calls.append((kwargs["backend"], kwargs["kernel_options"], torch.get_float32_matmul_precision()))
        return torch.zeros(len(x))

    monkeypatch.setattr(precision, "iwae_bound", spy)
    before = torch.get_float32_matmul_precision()
    for setup in ("triton-tf32", "torch-tf32", "torch-fp32"):
        assert precision.bounds(model, x, ids, 10, setup, batch_size=5).shape == (len(x),)
    tf32, high = kernels.KernelOptions(precision="tf32"), "high"
    assert (
        calls
        == [("triton", tf32, before)] * 3
        + [("torch", kernels.DEFAULT_OPTIONS, high)] * 3
        + [("torch", kernels.DEFAULT_OPTIONS, before)] * 3
    )


def test_cli_writes_the_table(tmp_path):
    out = tmp_path / "precision.csv"
    assert precision.main(["digits-standard", "--images", "5", "--k", "20", "--device", "cpu", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == precision.COLUMNS
    assert list(table["setup"]) == list(precision.SETUPS) and set(table["model"]) == {"digits-standard"}
    with pytest.raises(SystemExit):
        precision.main(["no-such-model", "--out", str(out)])
