"""The registry: entry files build models with the interface, committed checkpoints load, bad entries are named."""

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vaebench import cli
from vaebench.core.estimators import iwae_bound
from vaebench.core.interface import LatentVariableModel
from vaebench.families.vae import build_model
from vaebench.protocol import provenance, registry
from vaebench.protocol.registry import RegistryError

ENTRIES = registry.load_registry()


def copy_entry(name: str, folder: Path, new_name: str, **changes: str) -> Path:
    """A copy of a built-in entry file under ``folder/new_name`` with its name (and any top-level line) changed."""
    text = (registry.builtin_registry() / name / "entry.toml").read_text()
    text = text.replace(f'name = "{name}"', f'name = "{new_name}"')
    for key, value in changes.items():
        text = "\n".join(f"{key} = {value}" if line.startswith(f"{key} =") else line for line in text.splitlines())
    (folder / new_name).mkdir(parents=True, exist_ok=True)
    (folder / new_name / "entry.toml").write_text(text + "\n")
    return folder / new_name


@pytest.mark.parametrize("entry", ENTRIES.values(), ids=lambda e: e.name)
def test_entry_builds_a_model_with_the_interface(entry):
    small = replace(entry.model, hidden=8, n_components=min(entry.model.n_components, 3))
    model = build_model(small)
    assert isinstance(model, LatentVariableModel)
    x = torch.bernoulli(torch.full((3, small.x_dim), 0.3))
    bound = iwae_bound(model, x, 4, seed=0)
    assert bound.shape == (3,) and torch.isfinite(bound).all()
    assert model.posterior(x).event_shape == (entry.latent_dim,)


@pytest.mark.parametrize("entry", [e for e in ENTRIES.values() if e.trained], ids=lambda e: e.name)
def test_committed_checkpoint_loads_and_describes_itself(entry):
    model = registry.load(entry)
    assert sum(p.numel() for p in model.parameters()) > 0
    info = json.loads(entry.history.read_text())
    assert info["name"] == entry.name and info["dataset"] == entry.dataset
    assert info["model"]["prior"] == entry.model.prior
    assert len(info["history"]) >= 1 and {"data_sha256", "code_version", "wall_time_s"} <= info.keys()


def test_published_numbers_are_log_likelihoods_or_named_metrics():
    for entry in ENTRIES.values():
        for published in entry.published:
            if published.metric == "log_likelihood":
                assert published.value < 0, entry.name


def test_committed_checkpoints_stay_under_80_mb():
    total = sum(p.stat().st_size for p in registry.builtin_registry().glob("*/*.pt"))
    assert total < 80 * 2**20, f"{total / 2**20:.1f} MB of checkpoints"


def test_train_smoke_resume_and_warm_restart(tmp_path, capsys):
    """Training writes beside the entry file; the same command resumes; a fresh clone (the best checkpoint and
    its JSON, no per-epoch state) continues by warm restart."""
    folder = copy_entry("digits-standard", tmp_path, "mini")
    args = ["--registry", str(tmp_path), "train", "mini", "--max-epochs", "1"]
    assert cli.main(args) == 0 and cli.main(args) == 0
    assert "epoch 2" in capsys.readouterr().out
    history = json.loads((folder / "checkpoint.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    (folder / "state.pt").unlink()
    assert cli.main(args) == 0
    history = json.loads((folder / "checkpoint.json").read_text())["history"]
    assert history[2] == {"epoch": 2, "event": "warm restart from the best checkpoint"}
    assert history[-1]["epoch"] == 3
    assert cli.main(["--registry", str(tmp_path), "list"]) == 0
    assert "mini" in capsys.readouterr().out


def test_burda_learning_rate_schedule():
    from vaebench.protocol.train import TrainConfig, learning_rate

    cfg = TrainConfig(lr=1e-3, lr_schedule="burda")
    stage_starts = [0, 1, 4, 13, 40, 121, 364, 1093]  # stage i lasts 3^(i-1) epochs
    expected = [1e-3, 7.2e-4, 5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4, 1e-4]
    for start, lr in zip(stage_starts, expected):
        assert learning_rate(cfg, start) == pytest.approx(lr)
        if start:
            assert learning_rate(cfg, start - 1) > lr
    assert learning_rate(cfg, 3279) == pytest.approx(1e-4)


def test_gated_layer_is_value_times_sigmoid_gate():
    from vaebench.families.networks import GatedDense

    torch.manual_seed(0)
    layer = GatedDense(7, 5).double()
    x = torch.randn(4, 3, 7, dtype=torch.float64)
    expected = (x @ layer.value.weight.T + layer.value.bias) * torch.sigmoid(x @ layer.gate.weight.T + layer.gate.bias)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
    assert set(layer.state_dict()) == {"value.weight", "value.bias", "gate.weight", "gate.bias"}


@pytest.mark.parametrize(
    "argv,device,data_dir",
    [
        ([], "auto", None),
        (["--device", "cpu", "eval"], "cpu", None),
        (["eval", "--device", "cpu", "--data-dir", "d"], "cpu", "d"),
        (["--device", "cuda", "--data-dir", "d", "check", "--device", "cpu"], "cpu", "d"),
        (["list"], "auto", None),
    ],
)
def test_device_and_data_dir_go_before_or_after_the_subcommand(argv, device, data_dir):
    args = cli.parser().parse_args(argv)
    assert (args.device, args.data_dir) == (device, data_dir)


def test_registry_folders_add_up_before_or_after_the_subcommand():
    args = cli.parser().parse_args(["--registry", "a", "eval", "--registry", "b"])
    assert args.registry == ["b"]  # given after the subcommand, it replaces what came before (argparse)
    assert cli.parser().parse_args(["eval", "--registry", "a", "--registry", "b"]).registry == ["a", "b"]


def test_code_version_ignores_what_training_and_evaluation_write(tmp_path, monkeypatch):
    """Both the git id and the source hash; the hash works without git too."""

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True, capture_output=True
        )

    package = tmp_path / "bench" / "vaebench"
    for name in ("models/m/checkpoint.pt", "results/metrics.csv", "bench/vaebench/code.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("a")
    monkeypatch.setattr(provenance, "CHECKOUT", tmp_path)
    monkeypatch.setattr(provenance, "PACKAGE", package)
    assert provenance.code_version() == "unknown"  # not a git repository yet
    source = provenance.source_hash()
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "x")
    clean = provenance.code_version()
    assert clean and not clean.endswith("-dirty")
    (tmp_path / "models/m/checkpoint.pt").write_text("b")
    (tmp_path / "results/metrics.csv").write_text("b")
    assert provenance.code_version() == clean and provenance.source_hash() == source
    (package / "code.py").write_text("b")
    assert provenance.code_version() == clean + "-dirty" and provenance.source_hash() != source


# --- bad entry files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda t: t.replace('dataset = "digits"', 'dataset = "cifar"'), r"line 3: unknown dataset 'cifar'; known: "),
        (lambda t: t.replace("z_dim = 4", 'z_dim = "four"'), r"line 9: \[model\] z_dim = 'four' should be of type int"),
        (lambda t: t.replace("z_dim = 4", "z_size = 4"), r"line 9: unknown key 'z_size' in \[model\]"),
        (lambda t: t.replace("[train]", "[train"), r"not valid TOML \(.*line"),
        (lambda t: t.replace('family = "vae"', 'family = "gan"'), r"line 7: \[model\] needs family = \"vae\""),
        (lambda t: t.replace('family = "vae"', 'factory = "no_colon"'), r"factory = 'no_colon': write"),
        (lambda t: t.replace('name = "bad"', 'name = "a b"'), r"name = 'a b'"),
        (lambda t: t.replace('section = "tiny"', 'section = "main"'), r"section = 'main'"),
        (lambda t: t + "\n[[published]]\npaper = 'p'\n", r"\[\[published\]\] lacks table, value"),
        (
            lambda t: t + "\n[[published]]\npaper = 'p'\ntable = 't'\nvalue = 'abc'\n",
            r"value = 'abc' should be of type",
        ),
        (lambda t: t.replace('section = "tiny"', 'section = "tiny"\npublished = 5'), "published must be"),
        (
            lambda t: t.split("[train]")[0].replace('section = "tiny"', 'section = "tiny"\ntrain = "fast"'),
            r"\[train\] must be a table",
        ),
        (lambda t: t.replace('net = "gated"', 'net = "transformer"'), r"line 12: \[model\] net = 'transformer'; use"),
        (lambda t: t.replace("z_dim = 4", "z_dim = 0"), r"\[model\] z_dim = 0: use 1..100,000"),
        (lambda t: t.replace("hidden = ", "hidden = 1000000000000 #"), r"\[model\] hidden = 1000000000000: use 1.."),
        (
            lambda t: t.replace('net = "gated"', 'net = "gated"\nlogvar_limits = [nan, "a"]'),
            r"\[model\] logvar_limits = \[nan, 'a'\] should be of type tuple",
        ),
        (
            lambda t: t.replace('net = "gated"', 'net = "gated"\nlogvar_limits = [nan, nan]'),
            r"logvar_limits = \[nan, nan\]: use two finite numbers, low < high",
        ),
        (lambda t: t.replace('section = "tiny"', "n_valid = " + "[" * 3000 + "]" * 3000), "nested too deeply"),
        (
            lambda t: t + "\n[[published]]\npaper = 'p'\ntable = 't'\nvalue = nan\n",
            r"value = nan: a published number is finite",
        ),
        (lambda t: t.replace('section = "tiny"', "n_valid = 100"), r"digits has a fixed validation split"),
        (lambda t: t.replace('name = "bad"', 'name = "a\\tb"'), r"name = 'a\\tb'"),
    ],
)
def test_a_bad_entry_file_is_named_with_its_line(tmp_path, edit, message):
    folder = copy_entry("digits-standard", tmp_path, "bad")
    path = folder / "entry.toml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(RegistryError, match=message) as err:
        registry.load_registry([tmp_path])
    assert str(path) in str(err.value)


def test_two_entries_with_one_name_name_both_files(tmp_path):
    copy_entry("digits-standard", tmp_path / "a", "same")
    copy_entry("digits-vampprior", tmp_path / "b", "same")
    with pytest.raises(RegistryError, match=r"two entries are named 'same': .*a/same/entry.toml and .*b/same/entry"):
        registry.load_registry([tmp_path / "a", tmp_path / "b"])
    once = registry.load_registry([registry.builtin_registry(), registry.builtin_registry() / "digits-standard"])
    assert once["digits-standard"].source == ENTRIES["digits-standard"].source  # the same file reached twice


def test_registry_from_the_environment_and_a_missing_folder(tmp_path, monkeypatch):
    copy_entry("digits-standard", tmp_path, "from-env")
    monkeypatch.setenv("VAEBENCH_REGISTRY", str(tmp_path))
    assert "from-env" in registry.load_registry() and "digits-standard" in registry.load_registry()
    with pytest.raises(RegistryError, match="registry folder .*nowhere does not exist"):
        registry.load_registry([tmp_path / "nowhere"])
    (tmp_path / "a-file").write_text("")
    with pytest.raises(RegistryError, match="registry folder .*a-file is a file, not a folder"):
        registry.load_registry([tmp_path / "a-file"])
    fifo = tmp_path / "fifo-registry" / "fifo"
    fifo.mkdir(parents=True)
    os.mkfifo(fifo / "entry.toml")  # reading it would wait forever
    with pytest.raises(RegistryError, match="entry.toml: not a regular file"):
        registry.load_registry([tmp_path / "fifo-registry"])


def test_unknown_model_suggests_close_names_and_the_outside_forms():
    with pytest.raises(KeyError, match="did you mean digits-vampprior.*--registry DIR.*--model"):
        registry.get(ENTRIES, "digits-vampprio")


def test_a_copied_entry_evaluates_like_the_original(tmp_path):
    """A registry folder from outside (here a copy of a built-in entry and its checkpoint) goes through eval."""
    folder = copy_entry("digits-vampprior", tmp_path / "reg", "outside-copy")
    shutil.copy(ENTRIES["digits-vampprior"].checkpoint, folder / "checkpoint.pt")
    with pytest.raises(Exception, match="holds model 'digits-vampprior', not 'outside-copy'"):
        registry.load(registry.load_registry([tmp_path / "reg"])["outside-copy"])
