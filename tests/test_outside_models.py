"""A model written outside the suite (no import of its model classes) goes through every door: an entry in an
outside registry folder, the one-off ``--model`` form, ``report``, ``check`` with its own baseline, and the
Python API. Bad factories and checkpoints get errors that name the file and the problem."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

USER_MODEL = '''
"""Somebody's own VAE: plain torch, nothing from vaebench."""
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal


class TinyVAE(nn.Module):
    def __init__(self, x_dim=64, z_dim=3, hidden=16):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * z_dim))
        self.dec = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))
        self.register_buffer("zero", torch.zeros(z_dim))

    def posterior(self, x):
        loc, log_scale = self.enc(x).chunk(2, dim=-1)
        return Independent(Normal(loc, log_scale.clamp(-5, 2).exp()), 1)

    def prior(self):
        return Independent(Normal(self.zero, torch.ones_like(self.zero)), 1)

    def likelihood(self, z):
        return Independent(Bernoulli(logits=self.dec(z)), 1)


def build(z_dim=3, hidden=16):
    return TinyVAE(z_dim=z_dim, hidden=hidden)


def no_interface():
    return nn.Linear(2, 2)


class Raising(TinyVAE):
    def posterior(self, x):
        raise ValueError("my posterior is broken")


class NanWeight(TinyVAE):
    def likelihood(self, z):
        if z.dim() == 3:  # the importance samples [K, B, d]
            return Independent(Bernoulli(logits=self.dec(z) * float("nan"), validate_args=False), 1)
        return super().likelihood(z)


def raising():
    return Raising()


def nan_weight():
    return NanWeight()
'''


def run_bench(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run_bench.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        check=False,
    )


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """An outside registry folder ``reg`` with one entry ``mine`` (factory file beside it, a checkpoint made by
    the user's own code), and the same files for the one-off form."""
    root = tmp_path_factory.mktemp("outside")
    folder = root / "reg" / "mine"
    folder.mkdir(parents=True)
    (folder / "my_vae.py").write_text(USER_MODEL)
    sys.path.insert(0, str(folder))
    try:
        import my_vae
    finally:
        sys.path.remove(str(folder))
    torch.manual_seed(0)
    torch.save({"model": my_vae.build(z_dim=3, hidden=16).state_dict()}, folder / "checkpoint.pt")
    (folder / "entry.toml").write_text(
        'name = "mine"\ndataset = "digits"\n\n[model]\nfactory = "my_vae.py:build"\nz_dim = 3\nhidden = 16\n'
    )
    return root


def test_entry_form_goes_through_eval_report_and_check(outside, tmp_path):
    reg, out = str(outside / "reg"), tmp_path / "results"
    ran = run_bench("--registry", reg, "eval", "mine", "digits-standard", "--k", "50", "--out", str(out))
    assert ran.returncode == 0, ran.stderr
    record = json.loads((out / "records" / "mine.json").read_text())
    assert record["record"]["dataset"] == "digits" and record["key"]["factory_sha256"]
    assert (out / "per_example" / "mine.csv.gz").is_file()
    again = run_bench("--registry", reg, "eval", "mine", "--k", "50", "--out", str(out))
    assert "mine: unchanged, reusing the stored record" in again.stdout
    reported = run_bench("--registry", reg, "report", "--out", str(out))
    assert reported.returncode == 0, reported.stderr
    tables = (out / "tables.md").read_text()
    assert "| mine |" in tables and "| digits-standard |" in tables  # side by side on one dataset
    baseline = tmp_path / "mine-baseline.csv"
    quick = ["--registry", reg, "check", "mine", "--k", "20", "--n-test", "40", "--baseline", str(baseline)]
    assert run_bench(*quick, "--update").returncode == 0
    assert set(pd.read_csv(baseline).model) == {"mine"}
    checked = run_bench(*quick)
    assert checked.returncode == 0 and "5 of 5 metrics within tolerance" in checked.stdout


def test_changing_the_factory_code_invalidates_the_stored_record(outside, tmp_path):
    from vaebench.protocol import registry

    entry = registry.load_registry([outside / "reg"])["mine"]
    before = registry.model_key(entry)
    source = outside / "reg" / "mine" / "my_vae.py"
    text = source.read_text()
    try:
        source.write_text(text + "\n# edited\n")
        assert registry.model_key(entry) != before
    finally:
        source.write_text(text)


def test_one_off_form_and_python_api_agree(outside, tmp_path):
    folder = outside / "reg" / "mine"
    out = tmp_path / "results"
    ran = run_bench(
        "eval",
        "--model",
        "my_vae.py:build",
        "--checkpoint",
        str(folder / "checkpoint.pt"),
        "--dataset",
        "digits",
        "--name",
        "oneoff",
        "--k",
        "50",
        "--out",
        str(out),
        cwd=folder,
    )
    assert ran.returncode == 0, ran.stderr
    stored = json.loads((out / "records" / "oneoff.json").read_text())["record"]
    assert run_bench("report", "--out", str(out)).returncode == 0
    assert "| oneoff |" in (out / "tables.md").read_text()

    import vaebench
    from vaebench.protocol import registry

    model = registry.load(registry.load_registry([outside / "reg"])["mine"])
    record, per_example = vaebench.evaluate(model, "digits", k=50, device="cpu", name="oneoff")
    assert record.log_likelihood == pytest.approx(stored["log_likelihood"], abs=1e-9)
    assert per_example.index.name == "test_index" and len(per_example) == record.n_test == 300
    assert list(per_example.columns) == ["L_50", "L_50_mc_se", "jvi", "jvi_mc_se", "elbo", "elbo_mc_se", "ess", "khat"]


@pytest.mark.parametrize(
    "factory,message",
    [
        ("my_vae.py:no_interface", "returned a Linear without posterior, prior, likelihood"),
        ("my_vae.py:missing", "has no function 'missing'"),
        ("nowhere.py:build", "no file .*nowhere.py"),
        ("broken.py:build", r"could not be imported \(SyntaxError"),
        ("not_a_module_xyz:build", r"could not be imported \(ModuleNotFoundError"),
        ("my_vae.py", "write 'package.module:function'"),
        ("sys:exit", r"factory 'sys:exit' failed .*\(SystemExit"),
    ],
)
def test_bad_factories_are_named(outside, factory, message):
    folder = outside / "reg" / "mine"
    (folder / "broken.py").write_text("def build(:\n")
    ran = run_bench(
        "eval",
        "--model",
        factory,
        "--checkpoint",
        str(folder / "checkpoint.pt"),
        "--dataset",
        "digits",
        "--k",
        "5",
        "--out",
        str(outside / "never"),
        cwd=folder,
    )
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    assert pytest.importorskip("re").search(message, ran.stderr), ran.stderr
    assert not (outside / "never" / "records").exists()  # nothing written


def test_a_checkpoint_that_does_not_fit_names_keys_and_shapes(outside, tmp_path):
    folder = outside / "reg" / "mine"
    state = torch.load(folder / "checkpoint.pt", weights_only=True)["model"]
    state["dec.2.weight"] = state["dec.2.weight"][:, :2]
    del state["enc.0.bias"]
    state["extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")  # a bare state_dict is accepted as a checkpoint form
    ran = run_bench(
        "eval",
        "--model",
        "my_vae.py:build",
        "--checkpoint",
        str(tmp_path / "bad.pt"),
        "--dataset",
        "digits",
        "--k",
        "5",
        "--out",
        str(tmp_path / "out"),
        cwd=folder,
    )
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    for part in ("missing: enc.0.bias", "unexpected: extra", "shape: dec.2.weight (64, 2) (model (64, 16))"):
        assert part in ran.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "cifar"], "--dataset 'cifar': unknown; known: binarized-mnist"),
        ([], "a one-off model needs --model FILE.py:FUNCTION --checkpoint FILE --dataset NAME"),
    ],
)
def test_one_off_usage_errors(outside, args, message):
    folder = outside / "reg" / "mine"
    ran = run_bench(
        "eval", "--model", "my_vae.py:build", "--checkpoint", str(folder / "checkpoint.pt"), *args, cwd=folder
    )
    assert ran.returncode == 2 and message in ran.stderr and "Traceback" not in ran.stderr


@pytest.mark.parametrize(
    "factory,message",
    [
        (
            "my_vae.py:raising",
            "model mine-bad (my_vae.py:raising) failed during evaluation (ValueError: my posterior is",
        ),
        ("my_vae.py:nan_weight", "model mine-bad: log-weight is nan for test example"),
    ],
)
def test_a_model_that_fails_or_gives_nan_is_one_line(outside, tmp_path, factory, message):
    folder = outside / "reg" / "mine"
    ran = run_bench(
        "eval",
        "--model",
        factory,
        "--checkpoint",
        str(folder / "checkpoint.pt"),
        "--dataset",
        "digits",
        "--name",
        "mine-bad",
        "--k",
        "20",
        "--n-test",
        "30",
        "--out",
        str(tmp_path / "out"),
        cwd=folder,
    )
    assert ran.returncode == 2 and "Traceback" not in ran.stderr and message in ran.stderr, ran.stderr
    assert not (tmp_path / "out" / "records" / "mine-bad.json").exists()


def test_one_off_names_do_not_replace_other_models(outside, tmp_path):
    folder, out = outside / "reg" / "mine", tmp_path / "out"
    args = [
        "eval",
        "--model",
        "my_vae.py:build",
        "--dataset",
        "digits",
        "--k",
        "20",
        "--n-test",
        "30",
        "--out",
        str(out),
    ]
    taken = run_bench(*args, "--checkpoint", str(folder / "checkpoint.pt"), "--name", "digits-standard", cwd=folder)
    assert taken.returncode == 2 and "a registry entry has that name" in taken.stderr
    first = run_bench(*args, "--checkpoint", str(folder / "checkpoint.pt"), cwd=folder)
    assert first.returncode == 0, first.stderr
    assert (out / "records" / "mine.json").is_file()  # checkpoint.pt is named after its folder
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    other = tmp_path / "mine" / "checkpoint.pt"
    other.parent.mkdir()
    torch.save({"model": {k: v + 0.01 for k, v in state["model"].items()}}, other)
    second = run_bench(*args, "--checkpoint", str(other), cwd=folder)
    assert second.returncode == 2 and "checkpoint_sha256=" in second.stderr and "--force" in second.stderr
