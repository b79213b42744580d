"""Bad input gives a clear error and a non-zero exit; interruptions and reruns give the same numbers."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from vaebench.protocol.datasets import load_dataset
from vaebench.protocol import registry
from vaebench.protocol.checkpoint import CheckpointError, atomic_save, load_state
from vaebench.protocol.train import TrainConfig, train
from vaebench.families.vae import ModelConfig, build_model

ROOT = Path(__file__).resolve().parent.parent
TINY = "digits-vampprior"  # a committed checkpoint on a dataset that needs no files


def run_bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_bench.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=False)


# --- registry and checkpoints ------------------------------------------------------------------

def test_unknown_model_suggests_close_names():
    with pytest.raises(KeyError, match="did you mean digits-vampprior"):
        registry.get("digits-vampprio")
    result = run_bench("eval", "vae-vamprior")
    assert result.returncode == 2
    assert "unknown model 'vae-vamprior'; did you mean vae-vampprior" in result.stderr


def test_checkpoint_with_wrong_shapes_is_refused(tmp_path, monkeypatch):
    entry = registry.get(TINY)
    other = build_model(replace(entry.model, hidden=8))
    fake = tmp_path / f"{TINY}.pt"
    atomic_save({"model": other.state_dict(), "meta": {}}, fake)
    monkeypatch.setattr(registry, "CHECKPOINTS", tmp_path)
    with pytest.raises(CheckpointError, match=f"does not match registry entry '{TINY}'"):
        registry.load(entry)


def test_checkpoint_of_another_entry_with_the_same_shapes_is_refused(tmp_path, monkeypatch):
    """digits-standard and a copy of its entry with another name share every tensor shape: only the
    checkpoint's own record of its name and settings tells them apart."""
    source = registry.load_state(registry.get("digits-standard").checkpoint)
    monkeypatch.setattr(registry, "CHECKPOINTS", tmp_path)
    atomic_save(source, tmp_path / f"{TINY}.pt")
    monkeypatch.setitem(registry.REGISTRY, TINY, replace(registry.get("digits-standard"), name=TINY))
    with pytest.raises(CheckpointError, match=f"holds model 'digits-standard', not '{TINY}'"):
        registry.load(registry.get(TINY))
    atomic_save({**source, "meta": {**source["meta"], "name": TINY}}, tmp_path / f"{TINY}.pt")
    registry.load(registry.get(TINY))  # same name and settings: accepted
    moved = replace(registry.get(TINY), model=replace(registry.get(TINY).model, logvar_limits=(-7.0, 2.0)))
    monkeypatch.setitem(registry.REGISTRY, TINY, moved)
    with pytest.raises(CheckpointError, match="was trained with model settings"):
        registry.load(registry.get(TINY))


def test_training_state_of_another_architecture_is_a_clear_error(tmp_path):
    data = load_dataset("digits")
    data.train, data.valid = data.train[:100], data.valid[:50]
    cfg = TrainConfig(lr=3e-3, batch_size=50, warmup_epochs=1, max_epochs=2, patience=10, seed=5)
    config = ModelConfig(x_dim=64, z_dim=3, hidden=16, depth=1)
    train(build_model(config), data, cfg, tmp_path / "state.pt", tmp_path / "best.pt", {"name": "t"}, max_epochs=1)
    with pytest.raises(CheckpointError, match="state.pt does not match this model"):
        train(build_model(replace(config, hidden=8)), data, cfg, tmp_path / "state.pt", tmp_path / "best.pt",
              {"name": "t"})


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    good = registry.get(TINY).checkpoint.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state(tmp_path / "missing.pt")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_state(path)
    assert not marker.exists()


def test_damaged_pickle_in_a_valid_archive_is_called_corrupt_not_unsafe(tmp_path):
    import zipfile

    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, good)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, b"\x80\x02garbage" if item.filename.endswith("data.pkl") else data)
    with pytest.raises(CheckpointError, match="is corrupt"):
        load_state(bad)


# --- command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["eval", TINY, "--k", "0"], "--k 0: the number of importance samples must be at least 1"),
    (["eval", TINY, "--n-test", "301"], "--n-test 301: digits-vampprior's test set (digits) has 300 points"),
    (["--device", "cuda:7", "eval", TINY], "--device cuda:7: no such CUDA device"),
    (["--device", "gpu", "eval", TINY], "--device 'gpu' is not a device name"),
    (["eval", TINY, "--seed", "-1"], "--seed -1: must be at least 0"),
    (["eval", TINY, "--seed", "8388608"], "--seed 8388608: use 0..8388607"),
    (["eval", TINY, "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["eval", TINY, "--surgery-samples", "0"], "--surgery-samples 0: must be at least 1"),
])
def test_cli_rejects_bad_options(tmp_path, args, message):
    result = run_bench(*args, "--out", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_checkpoint_with_nan_weights_is_refused(tmp_path, monkeypatch):
    entry = registry.get(TINY)
    state = load_state(entry.checkpoint)
    state["model"]["decoder.out.bias"][3] = float("nan")
    atomic_save(state, tmp_path / f"{TINY}.pt")
    monkeypatch.setattr(registry, "CHECKPOINTS", tmp_path)
    with pytest.raises(CheckpointError, match="NaN or infinite values in decoder.out.bias"):
        registry.load(entry)


def test_check_fails_on_missing_metric_and_refuses_other_settings(tmp_path):
    from vaebench.cli import compare_with_baseline

    baseline = pd.DataFrame([{"model": "m", "metric": "mutual_info", "value": 1.0, "se": 0.1, "k": 100,
                              "n_test": 200, "checkpoint_sha256": "abc"}])
    table = compare_with_baseline([{"model": "m", "checkpoint_sha256": "abc"}], baseline)
    assert not table.ok.any() and table.note.tolist() == ["missing now"]
    moved = compare_with_baseline([{"model": "m", "checkpoint_sha256": "abc", "mutual_info": 2.0,
                                    "mutual_info_se": 0.1}], baseline)
    assert not moved.ok.any()
    path = tmp_path / "baseline.csv"
    baseline.to_csv(path, index=False)
    result = run_bench("check", TINY, "--k", "50", "--baseline", str(path))
    assert result.returncode == 2 and "the baseline was made with k, n_test = [[100, 200]]" in result.stderr


def test_check_update_keeps_other_models(tmp_path):
    path = tmp_path / "baseline.csv"
    pd.DataFrame([{"model": "other", "metric": "L_1", "value": -1.0, "se": 0.1, "k": 100, "n_test": 200,
                   "checkpoint_sha256": "abc"}]).to_csv(path, index=False)
    assert run_bench("check", "--update", TINY, "--baseline", str(path)).returncode == 0
    assert set(pd.read_csv(path).model) == {"other", TINY}


def test_progress_survives_until_the_record_is_stored(tmp_path):
    from vaebench.protocol.evaluate import evaluate

    progress = tmp_path / "p.progress.pt"
    evaluate(registry.load(registry.get(TINY)), load_dataset("digits"), k=50, n_test=20, progress_path=progress)
    assert progress.is_file()  # the CLI removes it only after writing the record


def test_unreadable_progress_file_is_replaced_with_a_warning(tmp_path):
    from vaebench.protocol.evaluate import evaluate

    model, data = registry.load(registry.get(TINY)), load_dataset("digits")
    want, _ = evaluate(model, data, k=50, n_test=20)
    progress = tmp_path / "p.progress.pt"
    progress.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="p.progress.pt is unreadable"):
        got, _ = evaluate(model, data, k=50, n_test=20, progress_path=progress)
    assert got["log_likelihood"] == want["log_likelihood"]


def test_cli_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_bench("eval", TINY, "--out", str(blocker / "results"))
    assert result.returncode == 2
    assert f"output folder {blocker / 'results'} cannot be written" in result.stderr


def test_foreign_file_among_records_is_a_clear_error(tmp_path):
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "junk.json").write_text("{}")
    result = run_bench("report", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "junk.json is not a stored record" in result.stderr


def test_non_binary_test_data_is_refused():
    from vaebench.protocol.datasets import DataError
    from vaebench.protocol.evaluate import evaluate

    data = load_dataset("digits")
    data.test = data.test * 0.5
    with pytest.raises(DataError, match="values other than 0 and 1"):
        evaluate(registry.load(registry.get(TINY)), data, k=2)


# --- interruptions and determinism -------------------------------------------------------------

def _values(out: Path) -> pd.DataFrame:
    frame = pd.read_csv(out / "metrics.csv")
    return frame.drop(columns=["wall_time_s", "code_version"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_killed_evaluation_resumes_to_the_same_numbers(tmp_path, sig):
    args = ["eval", TINY, "--k", "20000", "--batch-size", "10", "--seed", "4"]
    reference = tmp_path / "reference"
    assert run_bench(*args, "--out", str(reference)).returncode == 0
    out = tmp_path / "interrupted"
    out.mkdir()
    previous = out / "metrics.csv"
    previous.write_text("model,log_likelihood\nearlier,-1.0\n")
    # default SIGINT handling even where pytest itself was started in the background (which ignores it)
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_bench.py"), *args, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    progress = out / ".cache"
    deadline = time.time() + 120
    while time.time() < deadline and not any(progress.glob("*.progress.pt")):
        time.sleep(0.05)
    proc.send_signal(sig)  # at least one of the 30 batches is stored, each takes a while
    proc.wait(timeout=60)
    assert proc.returncode != 0, "the run finished before it could be interrupted"
    assert previous.read_text() == "model,log_likelihood\nearlier,-1.0\n"  # nothing already written is lost
    assert not (out / "records").exists()
    saved = torch.load(next(progress.glob("*.progress.pt")), weights_only=True)
    assert 0 < len(saved["done"]) < 30  # stopped part-way through the 30 batches
    assert run_bench(*args, "--out", str(out)).returncode == 0
    pd.testing.assert_frame_equal(_values(out), _values(reference))
    ref = pd.read_csv(reference / "per_example" / f"{TINY}.csv.gz")
    pd.testing.assert_frame_equal(pd.read_csv(out / "per_example" / f"{TINY}.csv.gz"), ref)


def test_same_command_same_numbers_and_batch_size_does_not_matter(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_bench("eval", TINY, "--k", "500", "--out", str(a)).returncode == 0
    assert run_bench("eval", TINY, "--k", "500", "--out", str(b), "--batch-size", "7", "--chunk-size", "50").returncode == 0
    pd.testing.assert_frame_equal(_values(a), _values(b))
    per_a = pd.read_csv(a / "per_example" / f"{TINY}.csv.gz")
    per_b = pd.read_csv(b / "per_example" / f"{TINY}.csv.gz")
    pd.testing.assert_frame_equal(per_a, per_b)
    again = run_bench("eval", TINY, "--k", "500", "--out", str(a), "--backend", "triton")
    assert "unchanged, reusing the stored record (made on " in again.stdout and "with the torch backend" in again.stdout
    changed = run_bench("eval", TINY, "--k", "250", "--out", str(a))  # another protocol setting is not reused
    assert "reusing" not in changed.stdout and _values(a)["k"].tolist() == [250]


def test_interrupted_training_gives_the_same_weights(tmp_path):
    data = load_dataset("digits")
    data.train, data.valid = data.train[:200], data.valid[:50]
    cfg = TrainConfig(lr=3e-3, batch_size=50, warmup_epochs=2, max_epochs=4, patience=10, seed=5)
    config = ModelConfig(x_dim=64, z_dim=3, hidden=16, depth=1, prior="vamp", n_components=4)

    def run(folder: Path, steps: list[int]) -> dict:
        torch.manual_seed(0)
        model = build_model(config)
        for n in steps:
            train(model, data, cfg, folder / "state.pt", folder / "best.pt", {"name": "t"}, max_epochs=n)
            model = build_model(config)
        return load_state(folder / "state.pt")

    straight, resumed = run(tmp_path / "a", [4]), run(tmp_path / "b", [1, 2, 1])
    assert resumed["progress"]["epoch"] == straight["progress"]["epoch"] == 4
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    history = json.loads((tmp_path / "b" / "best.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


def test_test_subset_is_a_fixed_spread_sample_not_a_prefix():
    from vaebench.protocol.evaluate import test_subset

    ids = test_subset(10_000, 1_000)
    assert torch.equal(ids, test_subset(10_000, 1_000)) and len(set(ids.tolist())) == 1_000
    assert bool((ids[1:] > ids[:-1]).all()) and ids.min() < 100 and ids.max() > 9_900
    assert (ids < 1_000).sum() < 150  # about a tenth of the points fall in any tenth of the file
    assert torch.equal(test_subset(300, 300), torch.arange(300))


def test_triton_backend_with_cpu_tensors_names_the_fix(monkeypatch):
    from vaebench import cli
    from vaebench.core import kernels

    monkeypatch.setattr(kernels, "_unavailable_reason", lambda: None)  # as on a machine with CUDA
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(cli.UsageError, match="--device cuda.*--backend torch"):
        cli.resolve_backend("triton", torch.device("cpu"))
    assert cli.resolve_backend("triton", torch.device("cuda")) == "triton"
    assert cli.resolve_backend("torch", torch.device("cpu")) == "torch"
