"""``pip install .`` in a fresh virtual environment gives a ``vaebench`` command that works from any folder,
beside a user's own packages named ``models`` and ``bench``."""

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``args`` run as a fresh shell would: without the PYTHONPATH that points tox's runs at the checkout."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(list(args), capture_output=True, text=True, timeout=900, cwd=cwd, check=False, env=env)


@pytest.mark.slow
def test_installed_command_works_from_another_folder_beside_a_users_models_package(tmp_path):
    env = tmp_path / "venv"
    # the test environment's torch, setuptools and friends are visible through a .pth file (no download); the
    # suite itself is installed fresh
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    site = run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path)
    Path(site.stdout.strip(), "test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-q",
        str(ROOT),
        cwd=tmp_path,
    )
    assert installed.returncode == 0, installed.stderr
    user = tmp_path / "user"
    for package in ("models", "bench"):
        (user / package).mkdir(parents=True)
        (user / package / "__init__.py").write_text(f"WHO = 'the user\\'s own {package}'\n")
    command = env / "bin" / "vaebench"
    assert run(str(command), "--help", cwd=user).returncode == 0
    listed = run(str(command), "list", cwd=user)
    assert listed.returncode == 0 and "vae-vampprior" in listed.stdout, listed.stderr
    assert str(ROOT) not in listed.stdout  # the built-in registry comes from the installed package
    evaluated = run(str(command), "eval", "digits-standard", "--k", "20", "--n-test", "30", "--out", "mine", cwd=user)
    assert evaluated.returncode == 0, evaluated.stderr
    assert (user / "mine" / "records" / "digits-standard.json").is_file()
    side_by_side = run(
        str(python),
        "-c",
        "import models, bench, vaebench, vaebench.cli; "
        "print(models.WHO, bench.WHO, vaebench.evaluate.__name__); "
        "vaebench.cli.main(['list'])",
        cwd=user,
    )
    assert side_by_side.returncode == 0, side_by_side.stderr
    assert "the user's own models the user's own bench evaluate" in side_by_side.stdout
    assert "digits-standard" in side_by_side.stdout
