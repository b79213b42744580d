"""Attacks on training ("Reliability, round two"): fresh runs give bit-identical weights on the CPU (through the
library and the CLI), and a damaged ``checkpoint.json``, best checkpoint or state file met on a restart is a
CheckpointError naming the file and the fix, never a traceback or a silent cast."""

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from vaebench.families.vae import ModelConfig, build_model
from vaebench.protocol import registry
from vaebench.protocol.checkpoint import CheckpointError, atomic_save, load_state
from vaebench.protocol.datasets import Dataset, load_dataset
from vaebench.protocol.settings import SettingsError
from vaebench.protocol.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
CFG = TrainConfig(lr=3e-3, batch_size=50, warmup_epochs=1, max_epochs=2, patience=10, seed=3)
MODEL = ModelConfig(x_dim=64, z_dim=3, hidden=16, depth=1, prior="vamp", n_components=4)


@pytest.fixture(scope="module")
def data() -> Dataset:
    full = load_dataset("digits")
    return Dataset("digits", full.train[:200], full.valid[:50], full.test[:50], image_shape=(8, 8))


def fit(
    folder: Path, data: Dataset, cfg: TrainConfig = CFG, model: ModelConfig = MODEL, epochs: int | None = None
) -> dict:
    return train(
        lambda: build_model(model),
        data,
        cfg,
        folder / "state.pt",
        folder / "checkpoint.pt",
        {"name": "t"},
        max_epochs=epochs,
    )


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run_bench.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "bench")},
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- determinism -----------------------------------------------------------------------------------------


def test_two_fresh_runs_give_bit_identical_weights(tmp_path, data):
    fit(tmp_path / "a", data)
    torch.manual_seed(12345)  # whatever the global generator holds, train seeds it before building the model
    torch.rand(100)
    fit(tmp_path / "b", data)
    first, second = load_state(tmp_path / "a" / "checkpoint.pt"), load_state(tmp_path / "b" / "checkpoint.pt")
    assert first["model"].keys() == second["model"].keys()
    for name, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][name]), name


def mini_registry(folder: Path) -> Path:
    """``digits-standard``'s entry as ``mini`` (no checkpoint) in ``folder/myreg/mini``."""
    source = registry.get(registry.load_registry([registry.builtin_registry()]), "digits-standard").source
    text = (
        source.read_text()
        .replace('name = "digits-standard"', 'name = "mini"')
        .replace("max_epochs = 40", "max_epochs = 3")
    )
    assert 'name = "mini"' in text and "max_epochs = 3" in text
    (folder / "myreg" / "mini").mkdir(parents=True)
    (folder / "myreg" / "mini" / "entry.toml").write_text(text)
    return folder / "myreg"


def test_cli_training_from_scratch_twice_gives_identical_checkpoints(tmp_path):
    reg = mini_registry(tmp_path)
    entry = reg / "mini"
    weights = []
    for _ in range(2):
        for name in ("checkpoint.pt", "checkpoint.json", "state.pt"):
            (entry / name).unlink(missing_ok=True)
        result = run_bench("--registry", str(reg), "train", "mini", "--max-epochs", "2")
        assert result.returncode == 0, result.stderr
        assert "mini: epoch 2," in result.stdout
        weights.append(load_state(entry / "checkpoint.pt")["model"])
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


# --- warm restart: checkpoint.json and the best checkpoint ------------------------------------------------


def restartable(tmp_path: Path, data: Dataset) -> Path:
    """A folder with a best checkpoint and its record but no state file (a fresh clone)."""
    folder = tmp_path / "run"
    fit(folder, data, epochs=1)
    (folder / "state.pt").unlink()
    return folder


DAMAGED_RECORDS = {
    "truncated": (lambda text: text[: len(text) // 2], "is not valid JSON"),
    "not JSON": (lambda text: "<html>503 Service Unavailable</html>", "is not valid JSON"),
    "empty": (lambda text: "", "is not valid JSON"),
    "a list": (lambda text: "[1, 2]", "is not a training record: it holds a JSON list, expected an object"),
    "no epochs": (
        lambda text: json.dumps({**json.loads(text), "epochs": "2"}),
        "is not a training record: 'epochs' is '2', expected a JSON int",
    ),
    "bad history": (
        lambda text: json.dumps({**json.loads(text), "history": [{"valid_elbo": -3}]}),
        "is not a training record: a 'history' row is not an object with an integer 'epoch'",
    ),
}


@pytest.mark.parametrize("case", DAMAGED_RECORDS)
def test_damaged_training_record_on_a_warm_restart_names_the_file_and_the_fix(tmp_path, data, case):
    folder = restartable(tmp_path, data)
    record = folder / "checkpoint.json"
    damage, found = DAMAGED_RECORDS[case]
    record.write_text(damage(record.read_text()))
    with pytest.raises(
        CheckpointError,
        match=rf"{record} {found}.*restore it with `git checkout -- {record}`, or "
        r"delete it \(and the checkpoint beside it\) to train from scratch",
    ):
        fit(folder, data)


def test_cli_truncated_training_record_is_one_line(tmp_path):
    reg = mini_registry(tmp_path)
    committed = registry.get(registry.load_registry([registry.builtin_registry()]), "digits-standard").checkpoint
    (reg / "mini" / "checkpoint.pt").write_bytes(committed.read_bytes())
    record = reg / "mini" / "checkpoint.json"
    record.write_text(committed.with_suffix(".json").read_text()[:300])
    line = one_line_error(run_bench("--registry", str(reg), "train", "mini", "--max-epochs", "1"))
    assert line.startswith(f"error: {record} is not valid JSON")
    assert line.endswith("or delete it (and the checkpoint beside it) to train from scratch")


@pytest.mark.parametrize("dtype", [torch.float16, torch.int64])
def test_warm_restart_refuses_a_checkpoint_of_another_dtype(tmp_path, data, dtype):
    """load_state_dict would cast float16 or int64 weights to float32 without a word."""
    folder = restartable(tmp_path, data)
    saved = load_state(folder / "checkpoint.pt")
    atomic_save({**saved, "model": {k: v.to(dtype) for k, v in saved["model"].items()}}, folder / "checkpoint.pt")
    with pytest.raises(
        CheckpointError,
        match=rf"{folder / 'checkpoint.pt'} does not match this model "
        rf"\(dtype: .*{dtype} \(model torch.float32\)",
    ):
        fit(folder, data)


@pytest.mark.parametrize("bad", [[1, 2], torch.zeros(3), {"model": [torch.zeros(3)]}])
def test_warm_restart_from_a_checkpoint_that_is_not_a_state_dict(tmp_path, data, bad):
    folder = restartable(tmp_path, data)
    atomic_save(bad, folder / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=rf"checkpoint {folder / 'checkpoint.pt'} (holds|has) .*expected a dict"):
        fit(folder, data)


# --- the per-epoch state file ----------------------------------------------------------------------------


def test_unreadable_or_mismatched_state_file_is_a_clear_error(tmp_path, data):
    folder = tmp_path / "run"
    fit(folder, data, epochs=1)
    state = folder / "state.pt"
    good = {k: v for k, v in load_state(state).items() if k != "digest"}  # the structure checks, without a checksum
    state.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=f"checkpoint {state} is truncated or corrupt"):
        fit(folder, data)
    atomic_save(good, state)
    with pytest.raises(CheckpointError, match=rf"{state} does not match this model \(shape: "):
        fit(folder, data, model=replace(MODEL, hidden=8))
    for damaged in (
        {**good, "progress": "epoch 1"},
        {**good, "data_rng": torch.zeros(3)},
        {**good, "progress": {**good["progress"], "epoch": "1"}},
    ):
        atomic_save(damaged, state)
        with pytest.raises(
            CheckpointError,
            match=f"training state {state} is damaged or from another version.*"
            "delete it to continue from the best checkpoint",
        ):
            fit(folder, data)
    moments = good["optimizer"]["state"][0]["exp_avg"]
    wrong = {
        **good["optimizer"],
        "state": {**good["optimizer"]["state"], 0: {**good["optimizer"]["state"][0], "exp_avg": moments.flatten()[:3]}},
    }
    atomic_save({**good, "optimizer": wrong}, state)
    with pytest.raises(CheckpointError, match=f"{state} does not match this model .*optimizer state 'exp_avg'"):
        fit(folder, data)


def test_unknown_training_settings_are_settings_errors(tmp_path, data):
    for change, key in (
        ({"objective": "elb0"}, "objective"),
        ({"lr_schedule": "cosine"}, "lr_schedule"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1.0}, "lr"),
    ):
        with pytest.raises(SettingsError, match=rf"t: \[train\] {key} = "):
            fit(tmp_path, data, cfg=replace(CFG, **change))
    assert not (tmp_path / "state.pt").exists()


# --- a stored run is keyed by what determines its weights; the stopping rule may change ---------------------


def keyed_fit(folder: Path, data: Dataset, cfg: TrainConfig = CFG, model: ModelConfig = MODEL, epochs=None) -> dict:
    meta = {"name": "t", "dataset": "digits", "data_sha256": registry.data_checksum(data), "model": asdict(model)}
    return train(
        lambda: build_model(model), data, cfg, folder / "state.pt", folder / "checkpoint.pt", meta, max_epochs=epochs
    )


@pytest.mark.parametrize("with_state", [True, False], ids=["state file", "committed checkpoint only"])
def test_resuming_with_other_settings_is_refused(tmp_path, data, with_state):
    folder = tmp_path / "run"
    keyed_fit(folder, data, epochs=1)
    if not with_state:
        (folder / "state.pt").unlink()
    with pytest.raises(CheckpointError, match=r"was trained with train\.lr=0\.003 \(now 0\.01\): restore those"):
        keyed_fit(folder, data, cfg=replace(CFG, lr=0.01))
    with pytest.raises(CheckpointError, match=r"model\.prior='vamp' \(now 'mog'\)"):
        keyed_fit(folder, data, model=replace(MODEL, prior="mog"))
    if with_state:
        other = Dataset("digits", data.train.flip(0), data.valid, data.test, image_shape=(8, 8))
        with pytest.raises(CheckpointError, match=r"was trained with data_sha256="):
            keyed_fit(folder, other)
    assert keyed_fit(folder, data, cfg=replace(CFG, patience=20))["epoch"] == 2  # the stopping rule may change


def test_raising_max_epochs_after_a_finished_run_goes_on(tmp_path, data):
    folder = tmp_path / "run"
    assert keyed_fit(folder, data)["done"]
    more = keyed_fit(folder, data, cfg=replace(CFG, max_epochs=3))
    assert more["epoch"] == 3 and more["done"] and [r["epoch"] for r in more["history"]] == [1, 2, 3]


def test_a_diverging_learning_rate_is_one_line_not_a_traceback(tmp_path, data):
    with pytest.raises(FloatingPointError, match=r"t: the .* became NaN or infinite in epoch 1 \(training diverged\)"):
        keyed_fit(tmp_path, data, cfg=replace(CFG, lr=1e12))
    registry_dir = tmp_path / "registry" / "diverging"
    registry_dir.mkdir(parents=True)
    entry = (ROOT / "models" / "digits-standard" / "entry.toml").read_text()
    (registry_dir / "entry.toml").write_text(
        entry.replace('name = "digits-standard"', 'name = "diverging"').replace("lr = ", "lr = 1e12 #")
    )
    line = one_line_error(
        run_bench("train", "diverging", "--registry", str(tmp_path / "registry"), "--max-epochs", "1")
    )
    assert "diverging: the " in line and "lower [train] lr" in line


def test_training_state_with_a_flipped_bit_is_refused(tmp_path, data):
    folder = tmp_path / "run"
    keyed_fit(folder, data, epochs=1)
    state = load_state(folder / "state.pt")
    state["model"]["decoder.out.bias"][0] += 1e-3  # loadable, plausible, wrong
    atomic_save(state, folder / "state.pt")
    with pytest.raises(CheckpointError, match=r"state\.pt is damaged \(its content does not match its checksum\)"):
        keyed_fit(folder, data)
