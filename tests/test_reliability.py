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

from vaebench.families.vae import ModelConfig, build_model
from vaebench.protocol import registry
from vaebench.protocol.checkpoint import CheckpointError, atomic_save, load_state
from vaebench.protocol.datasets import load_dataset
from vaebench.protocol.evaluate import evaluate
from vaebench.protocol.files import content_digest
from vaebench.protocol.settings import Settings
from vaebench.protocol.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
TINY = "digits-vampprior"  # a committed checkpoint on a dataset that needs no files
ENTRIES = registry.load_registry()


def entry_at(tmp_path: Path, checkpoint: Path, name: str = TINY) -> registry.Entry:
    """The built-in entry ``name`` with its checkpoint read from ``checkpoint`` instead."""
    return replace(ENTRIES[name], checkpoint=checkpoint)


def run_bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run_bench.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


# --- registry and checkpoints ------------------------------------------------------------------


def test_unknown_model_suggests_close_names():
    with pytest.raises(KeyError, match="did you mean digits-vampprior"):
        registry.get(ENTRIES, "digits-vampprio")
    result = run_bench("eval", "vae-vamprior")
    assert result.returncode == 2
    assert "unknown model 'vae-vamprior'; did you mean vae-vampprior" in result.stderr


def test_checkpoint_with_wrong_shapes_is_refused(tmp_path):
    entry = ENTRIES[TINY]
    other = build_model(replace(entry.model, hidden=8))
    fake = tmp_path / f"{TINY}.pt"
    atomic_save({"model": other.state_dict(), "meta": {}}, fake)
    with pytest.raises(CheckpointError, match=r"does not fit the model \(shape: encoder.0.0.value.weight \(8, 64\)"):
        registry.load(entry_at(tmp_path, fake))


def test_checkpoint_of_another_entry_with_the_same_shapes_is_refused(tmp_path):
    """digits-standard and a copy of its entry with another name share every tensor shape: only the
    checkpoint's own record of its name and settings tells them apart."""
    source = load_state(ENTRIES["digits-standard"].checkpoint)
    path = tmp_path / f"{TINY}.pt"
    atomic_save(source, path)
    renamed = replace(ENTRIES["digits-standard"], name=TINY, checkpoint=path)
    with pytest.raises(CheckpointError, match=f"holds model 'digits-standard', not '{TINY}'"):
        registry.load(renamed)
    atomic_save({**source, "meta": {**source["meta"], "name": TINY}}, path)
    registry.load(renamed)  # same name and settings: accepted
    moved = replace(renamed, model=replace(renamed.model, logvar_limits=(-7.0, 2.0)))
    with pytest.raises(CheckpointError, match="was trained with model settings"):
        registry.load(moved)


def test_training_state_of_another_architecture_is_a_clear_error(tmp_path):
    data = load_dataset("digits")
    data.train, data.valid = data.train[:100], data.valid[:50]
    cfg = TrainConfig(lr=3e-3, batch_size=50, warmup_epochs=1, max_epochs=2, patience=10, seed=5)
    config = ModelConfig(x_dim=64, z_dim=3, hidden=16, depth=1)
    train(
        lambda: build_model(config), data, cfg, tmp_path / "state.pt", tmp_path / "best.pt", {"name": "t"}, max_epochs=1
    )
    with pytest.raises(CheckpointError, match="state.pt does not match this model"):
        train(
            lambda: build_model(replace(config, hidden=8)),
            data,
            cfg,
            tmp_path / "state.pt",
            tmp_path / "best.pt",
            {"name": "t"},
        )


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    good = ENTRIES[TINY].checkpoint.read_bytes()
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


@pytest.mark.parametrize(
    "args,message",
    [
        (["eval", TINY, "--k", "0"], "--k 0: use 1..1,000,000"),
        (["eval", TINY, "--k", str(10**12)], "--k 1,000,000,000,000: use 1..1,000,000"),
        (["eval", TINY, "--n-test", "301"], "--n-test 301: digits-vampprior's test set (digits) has 300 points"),
        (["--device", "cuda:7", "eval", TINY], "--device cuda:7: no such CUDA device"),
        (["--device", "gpu", "eval", TINY], "--device 'gpu' is not a device name"),
        (["eval", TINY, "--seed", "-1"], "--seed -1: use 0..8,388,607"),
        (["eval", TINY, "--seed", "8388608"], "--seed 8,388,608: use 0..8,388,607"),
        (["eval", TINY, "--batch-size", "0"], "--batch-size 0: use 1..100,000"),
        (["eval", TINY, "--surgery-samples", "0"], "--surgery-samples 0: use 1..1,000,000"),
        (["eval", TINY, "--surgery-samples", str(10**13)], "--surgery-samples 10,000,000,000,000: use 1..1,000,000"),
        (["eval", TINY, "--chunk-size", "0"], "--chunk-size 0: use 1 or more"),
        (["train", TINY, "--max-epochs", "0"], "--max-epochs 0: train at least one epoch"),
        (["eval", TINY, "--checkpoint", "x.pt"], "--checkpoint go with --model FILE.py:FUNCTION"),
        (
            ["eval", TINY, "--model", "m.py:f", "--checkpoint", "nowhere.pt", "--dataset", "digits"],
            "--checkpoint nowhere.pt: no such file",
        ),
        (["--registry", "/nonexistent/registry", "list"], "registry folder /nonexistent/registry does not exist"),
        (["compare", TINY], "two or more"),
    ],
)
def test_cli_rejects_bad_options(tmp_path, args, message):
    result = run_bench(*args, *(["--out", str(tmp_path)] if "eval" in args else []))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", TINY, "--out", ""], "argument --out: '' is not a usable path"),
        (["report", "--out", " "], "argument --out: ' ' is not a usable path"),
        (["check", TINY, "--baseline", ""], "argument --baseline: '' is not a usable path"),
        (["--data-dir", "", "list"], "argument --data-dir: '' is not a usable path"),
        (["eval", "--k", "many"], "argument --k: invalid int value: 'many'; see `vaebench eval --help`"),
        (["evaluate"], "invalid choice: 'evaluate'"),
    ],
)
def test_usage_errors_are_one_line_and_empty_paths_are_refused(tmp_path, args, message):
    """An empty path would mean the current folder (records written where nobody looks): refused, as every
    argparse error, in one line with exit 2 and nothing written."""
    before = set(ROOT.iterdir())
    result = run_bench(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert set(ROOT.iterdir()) == before


def test_checkpoint_with_nan_weights_is_refused(tmp_path):
    state = load_state(ENTRIES[TINY].checkpoint)
    state["model"]["decoder.out.bias"][3] = float("nan")
    atomic_save(state, tmp_path / f"{TINY}.pt")
    with pytest.raises(CheckpointError, match="NaN or infinite values in decoder.out.bias"):
        registry.load(entry_at(tmp_path, tmp_path / f"{TINY}.pt"))


def test_check_update_keeps_other_models(tmp_path):
    path = tmp_path / "baseline.csv"
    pd.DataFrame(
        [
            {
                "model": "other",
                "metric": "L_1",
                "value": -1.0,
                "se": 0.1,
                "k": 100,
                "n_test": 200,
                "checkpoint_sha256": "abc",
            }
        ]
    ).to_csv(path, index=False)
    assert run_bench("check", "--update", TINY, "--baseline", str(path)).returncode == 0
    assert set(pd.read_csv(path).model) == {"other", TINY}


def test_progress_survives_until_the_record_is_stored(tmp_path):
    progress = tmp_path / "p.progress.pt"
    evaluate(registry.load(ENTRIES[TINY]), load_dataset("digits"), Settings(k=50, n_test=20), progress_path=progress)
    assert progress.is_file()  # the CLI removes it only after writing the record


def test_unreadable_progress_file_is_replaced_with_a_warning(tmp_path):
    model, data = registry.load(ENTRIES[TINY]), load_dataset("digits")
    want, _ = evaluate(model, data, Settings(k=50, n_test=20))
    progress = tmp_path / "p.progress.pt"
    progress.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="p.progress.pt is unreadable"):
        got, _ = evaluate(model, data, Settings(k=50, n_test=20), progress_path=progress)
    assert got.log_likelihood == want.log_likelihood


def test_progress_file_with_a_flipped_bit_is_replaced_with_a_warning(tmp_path):
    model, data = registry.load(ENTRIES[TINY]), load_dataset("digits")
    settings = Settings(k=50, n_test=20, batch_size=10)
    want, _ = evaluate(model, data, settings)
    progress = tmp_path / "p.progress.pt"
    evaluate(model, data, settings, progress_path=progress)
    saved = torch.load(progress, weights_only=True)
    batch = next(iter(saved["done"].values()))  # one finished batch: its tensors, in whatever container
    tensor = next(t for t in (batch.values() if isinstance(batch, dict) else batch) if isinstance(t, torch.Tensor))
    tensor.view(-1)[0] = tensor.view(-1)[0] + 1e-3  # a flipped low bit: loadable, plausible, wrong
    torch.save(saved, progress)
    with pytest.warns(UserWarning, match="p.progress.pt is damaged"):
        got, _ = evaluate(model, data, settings, progress_path=progress)
    assert got.log_likelihood == want.log_likelihood


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
    assert "junk.json is not a readable record" in result.stderr


def test_non_binary_test_data_is_refused():
    from vaebench.protocol.datasets import DataError

    data = load_dataset("digits")
    data.test = data.test * 0.5
    with pytest.raises(DataError, match="values other than 0 and 1"):
        evaluate(registry.load(ENTRIES[TINY]), data, Settings(k=2))


# --- interruptions and determinism -------------------------------------------------------------


def _values(out: Path) -> pd.DataFrame:
    frame = pd.read_csv(out / "metrics.csv")
    return frame.drop(columns=["wall_time_s", "code_version", "source_sha256"])


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
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_bench.py"), *args, "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
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
    assert (
        run_bench("eval", TINY, "--k", "500", "--out", str(b), "--batch-size", "7", "--chunk-size", "50").returncode
        == 0
    )
    pd.testing.assert_frame_equal(_values(a), _values(b))
    per_a = pd.read_csv(a / "per_example" / f"{TINY}.csv.gz")
    per_b = pd.read_csv(b / "per_example" / f"{TINY}.csv.gz")
    # k-hat is fitted to the largest weights scaled by the largest: the float32 rounding of a log-weight (a few
    # 1e-6 nats between batch shapes) moves it by about as much, relative; 1e-4 leaves a tenfold margin
    pd.testing.assert_frame_equal(per_a.drop(columns="khat"), per_b.drop(columns="khat"))
    pd.testing.assert_series_equal(per_a["khat"], per_b["khat"], check_exact=False, atol=1e-4, rtol=0)
    # byte for byte: the gzip header carries neither the temporary file's name nor a time
    c = tmp_path / "c"
    assert run_bench("eval", TINY, "--k", "500", "--out", str(c)).returncode == 0
    assert (a / "per_example" / f"{TINY}.csv.gz").read_bytes() == (c / "per_example" / f"{TINY}.csv.gz").read_bytes()
    again = run_bench("eval", TINY, "--k", "500", "--out", str(a), "--backend", "triton")
    assert "unchanged, reusing the stored record (made on " in again.stdout and "with the torch backend" in again.stdout
    quick = run_bench("eval", TINY, "--k", "250", "--out", str(a))  # would replace a K=500 record: refused
    assert quick.returncode == 2 and "made with k=500 (now 250); write this run elsewhere with --out" in quick.stderr
    assert _values(a)["k"].tolist() == [500]
    changed = run_bench("eval", TINY, "--k", "250", "--out", str(a), "--force")  # another setting is not reused
    assert "reusing" not in changed.stdout and _values(a)["k"].tolist() == [250]
    assert (a / "per_example" / f"{TINY}.csv.gz").read_bytes() != (c / "per_example" / f"{TINY}.csv.gz").read_bytes()


def test_interrupted_training_gives_the_same_weights(tmp_path):
    data = load_dataset("digits")
    data.train, data.valid = data.train[:200], data.valid[:50]
    cfg = TrainConfig(lr=3e-3, batch_size=50, warmup_epochs=2, max_epochs=4, patience=10, seed=5)
    config = ModelConfig(x_dim=64, z_dim=3, hidden=16, depth=1, prior="vamp", n_components=4)

    def run(folder: Path, steps: list[int]) -> dict:
        for n in steps:
            train(
                lambda: build_model(config),
                data,
                cfg,
                folder / "state.pt",
                folder / "best.pt",
                {"name": "t"},
                max_epochs=n,
            )
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
    from vaebench.core import kernels
    from vaebench.protocol.runner import check_backend
    from vaebench.protocol.settings import SettingsError

    monkeypatch.setattr(kernels, "_unavailable_reason", lambda: None)  # as on a machine with CUDA
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(SettingsError, match="--device cuda.*--backend torch"):
        check_backend(Settings(backend="triton"), torch.device("cpu"))
    check_backend(Settings(backend="triton"), torch.device("cuda"))
    check_backend(Settings(backend="torch"), torch.device("cpu"))


# --- round two of the attacks: partial state keyed by everything, damaged results and baselines ---------------


def test_resuming_after_a_data_change_does_not_mix_two_data_sets(tmp_path):
    """The progress file is keyed by the data (and the code): batches of the old data are not reused."""
    model, data = registry.load(ENTRIES[TINY]), load_dataset("digits")
    settings = Settings(k=50, n_test=40, batch_size=20)
    progress = tmp_path / "p.progress.pt"
    inverted = load_dataset("digits")
    inverted.test = 1 - inverted.test
    evaluate(model, inverted, settings, progress_path=progress, fingerprint="code-a")
    saved = torch.load(progress, weights_only=True)
    saved["done"] = {0: saved["done"][0]}  # as if killed after the first batch
    saved["digest"] = content_digest(saved["done"])
    torch.save(saved, progress)
    want, want_per = evaluate(model, data, settings)
    got, got_per = evaluate(model, data, settings, progress_path=progress, fingerprint="code-a")
    assert got.log_likelihood == want.log_likelihood
    assert torch.equal(got_per["L_50"], want_per["L_50"])
    evaluate(model, data, settings, progress_path=progress, fingerprint="code-a")
    saved = torch.load(progress, weights_only=True)
    batch = saved["done"][0]  # a stored batch that another code version would have made
    saved["done"][0] = {k: v + 100.0 if v.is_floating_point() else v for k, v in batch.items()}
    saved["digest"] = content_digest(saved["done"])
    torch.save(saved, progress)
    other_code, _ = evaluate(model, data, settings, progress_path=progress, fingerprint="code-b")
    assert other_code.log_likelihood == want.log_likelihood


def test_temporary_and_foreign_files_among_records_are_skipped(tmp_path):
    out = tmp_path / "out"
    assert run_bench("eval", TINY, "--k", "20", "--n-test", "30", "--out", str(out)).returncode == 0
    record = out / "records" / f"{TINY}.json"
    (out / "records" / f".{TINY}.tmp123.json").write_text(record.read_text())  # left by a kill before rename
    (out / "records" / "folder.json").mkdir()
    result = run_bench("report", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert pd.read_csv(out / "metrics.csv").model.tolist() == [TINY]


def test_a_copied_record_and_an_infinite_per_example_value_are_named(tmp_path):
    out = tmp_path / "out"
    assert run_bench("eval", TINY, "digits-standard", "--k", "20", "--n-test", "30", "--out", str(out)).returncode == 0
    copy = out / "records" / "my-copy.json"
    copy.write_text((out / "records" / f"{TINY}.json").read_text())
    result = run_bench("report", "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{copy} holds the record of '{TINY}', not of 'my-copy'" in result.stderr
    copy.unlink()
    per_example = out / "per_example" / f"{TINY}.csv.gz"
    frame = pd.read_csv(per_example)
    frame.loc[4, "L_20"] = float("-inf")
    frame.to_csv(per_example, index=False)
    for command in (["report"], ["compare", TINY, "digits-standard"]):
        result = run_bench(*command, "--out", str(out))
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"{per_example} is damaged (line 6, column L_20: " in result.stderr
        assert "is not a finite number" in result.stderr


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "UnicodeDecodeError"),
        (lambda p: p.write_text('{"key": {}, "record": 5}'), "a record is a JSON object, not int"),
        (
            lambda p: p.write_text(p.read_text().replace('"log_likelihood": -', '"log_likelihood": "x", "was": -')),
            "field 'log_likelihood' = 'x' is not a float",
        ),
        (lambda p: p.write_text('{"key": {}, "record": {}}'), "missing field 'model'"),
        (lambda p: p.write_text(p.read_text()[:100]), "JSONDecodeError"),
        (
            lambda p: p.write_text(p.read_text().replace('"model": "digits-vampprior"', '"model": ""')),
            "field 'model' is empty",
        ),
    ],
)
def test_a_damaged_record_is_named_not_a_traceback(tmp_path, damage, message):
    out = tmp_path / "out"
    assert run_bench("eval", TINY, "--k", "20", "--n-test", "30", "--out", str(out)).returncode == 0
    path = out / "records" / f"{TINY}.json"
    damage(path)
    for command in (["report"], ["eval", TINY, "--k", "20", "--n-test", "30"]):
        result = run_bench(*command, "--out", str(out))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"{path} is not a readable record" in result.stderr and message in result.stderr


def _baseline(tmp_path: Path) -> Path:
    path = tmp_path / "baseline.csv"
    assert run_bench("check", "--update", TINY, "--baseline", str(path), "--k", "20", "--n-test", "30").returncode == 0
    return path


@pytest.mark.parametrize(
    "damage,code,message",
    [
        (lambda f: f.iloc[1:], 1, "log_likelihood"),  # a deleted row: the metric is not compared any more
        (lambda f: f.assign(model="gone"), 1, "not in the baseline"),  # all of a model's rows
        (lambda f: f.assign(se=float("inf")), 2, "se = inf is not a finite standard error"),
        (lambda f: f.assign(value=float("nan")), 2, "value = nan is not a finite number"),
        (lambda f: f.assign(k=f.k.astype(float) + 0.5), 2, "k = 20.5 is not a whole number of samples"),
        (lambda f: f.assign(n_test="all"), 2, "n_test = 'all' is not a whole number of test points"),
        (lambda f: pd.concat([f, f.iloc[:1]]), 2, "has 2 rows, expected one"),
        (lambda f: f.assign(model=[""] + list(f.model[1:])), 2, "line 2 has no model name"),
        (lambda f: f.assign(value=f.value + 500, se=1e300), 2, "is 1e+300, but this protocol gives"),
        (lambda f: f.drop(columns=["se"]), 2, "lacks the columns se"),
        (lambda f: f.iloc[:0], 2, "has no rows"),
        (lambda f: f.assign(metric="elbo_gap"), 2, "names metrics it cannot check (elbo_gap"),
    ],
)
def test_check_fails_on_a_damaged_baseline(tmp_path, damage, code, message):
    path = _baseline(tmp_path)
    damage(pd.read_csv(path)).to_csv(path, index=False)
    result = run_bench("check", "--baseline", str(path), "--k", "20", "--n-test", "30", TINY)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stdout + result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02binary", b"just,a\nheader,line\n"])
def test_check_refuses_an_unreadable_baseline(tmp_path, content):
    path = tmp_path / "baseline.csv"
    path.write_bytes(content)
    result = run_bench("check", "--baseline", str(path), TINY)
    assert result.returncode == 2 and "Traceback" not in result.stderr and str(path) in result.stderr


def test_check_baseline_of_other_settings_is_refused(tmp_path):
    path = _baseline(tmp_path)
    result = run_bench("check", TINY, "--k", "50", "--baseline", str(path))
    assert result.returncode == 2 and "was made with k, n_test = (20, 30), not 50, 200" in result.stderr


def test_a_full_disk_gives_one_line_and_keeps_earlier_results(tmp_path, monkeypatch, capsys):
    import errno

    from vaebench import cli

    out = tmp_path / "out"
    assert cli.main(["eval", TINY, "--k", "20", "--n-test", "30", "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
    real_replace = Path.replace

    def full(self, target):
        if not str(self.name).startswith("."):
            return real_replace(self, target)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "replace", full)
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("unexpected pos 64")))
    capsys.readouterr()
    assert cli.main(["eval", TINY, "--k", "20", "--n-test", "30", "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "intact" in err and len(err.strip().splitlines()) == 1
    assert before == {p: p.read_bytes() for p in before}


def test_concurrent_evaluations_keep_every_row(tmp_path):
    out = tmp_path / "out"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "run_bench.py"),
                "eval",
                name,
                "--k",
                "20",
                "--n-test",
                "30",
                "--out",
                str(out),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name in ("digits-standard", "digits-vampprior")
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert sorted(pd.read_csv(out / "metrics.csv").model) == ["digits-standard", "digits-vampprior"]


def test_check_update_refuses_to_mix_settings_and_names_the_way_out_of_a_damaged_baseline(tmp_path):
    path = _baseline(tmp_path)  # k=20, n_test=30
    pd.read_csv(path).assign(model="other").to_csv(path, index=False)
    mixed = run_bench("check", "--update", TINY, "--baseline", str(path), "--k", "10", "--n-test", "30")
    assert mixed.returncode == 2 and "other models' rows made with k, n_test = [(20, 30)]" in mixed.stderr
    path.write_text("model,metric\n")
    damaged = run_bench("check", "--update", TINY, "--baseline", str(path), "--k", "10", "--n-test", "30")
    assert damaged.returncode == 2 and f"delete {path} first" in damaged.stderr


def test_a_per_example_file_not_written_with_its_record_is_named_and_not_reused(tmp_path):
    """A run stopped between writing the per-example file and the record (or another run's file put in its
    place) leaves a pair that does not belong together: the report names it, eval evaluates again."""
    out = tmp_path / "out"
    quick = ("--k", "20", "--n-test", "30", "--out", str(out))
    assert run_bench("eval", TINY, "digits-standard", *quick).returncode == 0
    per_example = out / "per_example" / f"{TINY}.csv.gz"
    frame = pd.read_csv(per_example)
    frame["L_20"] = frame["L_20"] - 1.0  # plausible, well formed, not the record's
    frame.to_csv(per_example, index=False)
    result = run_bench("report", "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{per_example} is damaged (it is not the file written with" in result.stderr
    again = run_bench("eval", TINY, *quick)
    assert again.returncode == 0 and "reusing" not in again.stdout, again.stdout
    assert run_bench("report", "--out", str(out)).returncode == 0


def test_a_record_of_other_settings_stored_meanwhile_is_not_replaced(tmp_path):
    """check_replaceable is asked again under the results lock when the record is written: a quick run that
    started before a full one finished cannot replace it."""
    from vaebench.protocol.results import ResultsError, save_record

    model, data = registry.load(ENTRIES[TINY]), load_dataset("digits")
    record, per_example = evaluate(model, data, Settings(k=20, n_test=30))
    full = {"k": 5000, "n_test": None, "seed": 0, "surgery_samples": 10_000}
    quick = {**full, "k": 20, "n_test": 30}
    save_record(tmp_path, TINY, full, record, per_example, force=False)
    with pytest.raises(ResultsError, match=r"made with k=5000 \(now 20\)"):
        save_record(tmp_path, TINY, quick, record, per_example, force=False)
    save_record(tmp_path, TINY, quick, record, per_example, force=True)


# --- hostile inputs, round four ---------------------------------------------------------------------------


def bare_entry(folder: Path, name: str = "bare", **model: str) -> Path:
    """An outside registry ``folder`` with ``name``: digits-standard's entry whose checkpoint holds only the
    weights (no recorded settings), with ``model`` lines added to its [model] table."""
    entry = folder / name
    entry.mkdir(parents=True)
    text = (ROOT / "models" / "digits-standard" / "entry.toml").read_text().replace("digits-standard", name)
    extra = "".join(f"\n{key} = {value}" for key, value in model.items())
    (entry / "entry.toml").write_text(text.replace('net = "gated"', 'net = "gated"' + extra))
    torch.save({"model": load_state(ENTRIES["digits-standard"].checkpoint)["model"]}, entry / "checkpoint.pt")
    return folder


def test_changed_model_settings_of_a_bare_checkpoint_are_not_reused(tmp_path):
    out, quick = tmp_path / "out", ("--k", "20", "--n-test", "30")
    reg = bare_entry(tmp_path / "a")
    assert run_bench("--registry", str(reg), "eval", "bare", *quick, "--out", str(out)).returncode == 0
    changed = bare_entry(tmp_path / "b", logvar_limits="[-0.5, 0.5]")
    again = run_bench("--registry", str(changed), "eval", "bare", *quick, "--out", str(out))
    assert again.returncode == 0 and "reusing" not in again.stdout, again.stdout + again.stderr
    fresh = run_bench("--registry", str(changed), "eval", "bare", *quick, "--out", str(tmp_path / "fresh"))
    assert (
        json.loads((out / "records" / "bare.json").read_text())["record"]["log_likelihood"]
        == json.loads((tmp_path / "fresh" / "records" / "bare.json").read_text())["record"]["log_likelihood"]
    ), fresh.stderr


def test_an_x_dim_that_does_not_fit_the_data_is_named(tmp_path):
    reg = bare_entry(tmp_path / "reg")
    path = reg / "bare" / "entry.toml"
    path.write_text(path.read_text().replace("x_dim = 64", "x_dim = 784"))
    for command in (["train", "bare", "--max-epochs", "1"], ["eval", "bare", "--k", "5", "--out", str(tmp_path)]):
        result = run_bench("--registry", str(reg), *command)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "x_dim = 784, but digits images have 64 pixels; set x_dim = 64" in result.stderr


def test_training_into_another_models_checkpoint_is_refused(tmp_path):
    reg = tmp_path / "reg"
    (reg / "thief").mkdir(parents=True)
    text = (ROOT / "models" / "digits-standard" / "entry.toml").read_text().replace("digits-standard", "thief")
    source = ENTRIES["digits-standard"].checkpoint
    (reg / "thief" / "entry.toml").write_text(text.replace('section = "tiny"', f'checkpoint = "{source}"'))
    before = source.read_bytes()
    result = run_bench("--registry", str(reg), "train", "thief", "--max-epochs", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "holds model 'digits-standard', not 'thief'" in result.stderr
    assert source.read_bytes() == before


def test_a_record_edited_by_hand_is_named_and_an_invalid_one_never_written(tmp_path):
    out = tmp_path / "out"
    assert run_bench("eval", TINY, "--k", "20", "--n-test", "30", "--out", str(out)).returncode == 0
    path = out / "records" / f"{TINY}.json"
    stored = json.loads(path.read_text())
    stored["record"]["L_1"] = -1e308  # well formed, plausible to a parser, not what was computed
    path.write_text(json.dumps(stored))
    for command in (["report"], ["eval", TINY, "--k", "20", "--n-test", "30"]):
        result = run_bench(*command, "--out", str(out))
        assert result.returncode == 2 and "edited or damaged after it was written" in result.stderr, result.stderr
    from vaebench.protocol.results import ResultsError, save_record

    model, data = registry.load(ENTRIES[TINY]), load_dataset("digits")
    record, per_example = evaluate(model, data, Settings(k=20, n_test=30))
    with pytest.raises(ResultsError, match="cannot be a record .*an L_k field is NaN or infinite.*nothing was written"):
        save_record(tmp_path / "new", TINY, {}, replace(record, bounds={**record.bounds, 1: float("nan")}), per_example)
    assert not (tmp_path / "new" / "records").exists() or not list((tmp_path / "new" / "records").iterdir())


def test_write_failures_name_the_file_and_a_fix_that_fits_the_command(tmp_path, monkeypatch, capsys):
    """torch reports a full disk as a RuntimeError; train has no --out, check writes its --baseline."""
    from vaebench import cli

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    reg = bare_entry(tmp_path / "reg")
    monkeypatch.setattr(torch, "save", full_disk)
    assert cli.main(["--registry", str(reg), "train", "bare", "--max-epochs", "1"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.count("\n") == 0 and "could not write the file" in line and str(reg / "bare") in line
    assert line.endswith("free space, or make the model's folder writable")
    (tmp_path / "out" / "records").mkdir(parents=True)
    (tmp_path / "out" / "per_example").write_text("a file where a folder belongs")
    assert cli.main(["eval", TINY, "--k", "5", "--out", str(tmp_path / "out")]) == 2
    assert "per_example is a file, not a folder" in capsys.readouterr().err


def test_long_names_count_bytes_and_warnings_are_one_line(tmp_path):
    name = "模" * 40  # 40 characters, 120 bytes: the file names beside it would pass 255 bytes
    checkpoint = str(ENTRIES[TINY].checkpoint)
    result = run_bench("eval", "--model", "m.py:f", "--checkpoint", checkpoint, "--dataset", "digits", "--name", name)
    assert result.returncode == 2 and "at most 100 bytes" in result.stderr
    out = tmp_path / "out"
    (out / ".cache").mkdir(parents=True)
    (out / ".cache").chmod(0o555)  # progress cannot be stored: a warning, and the run goes on
    if os.access(out / ".cache", os.W_OK):
        (out / ".cache").rmdir()
        (out / ".cache").write_text("a file where the progress folder belongs")
    result = run_bench("eval", TINY, "--k", "20", "--n-test", "30", "--out", str(out))
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "progress file" in line]
    assert warned and all(line.startswith("warning: ") for line in warned), result.stderr
    assert len(result.stderr.strip().splitlines()) == len(warned)


def test_comparison_files_of_different_model_lists_never_share_a_name():
    from vaebench.report.compare import comparison_stem

    assert comparison_stem(["a_vs_b", "c"]) != comparison_stem(["a", "b_vs_c"])
    assert comparison_stem(["a", "b"]) == "a_vs_b"
