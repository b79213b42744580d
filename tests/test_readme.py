"""The README's "Evaluate your own model" section runs as written: its model file, its Python, its entry file and
its shell commands, in a fresh folder, with ``vaebench`` being ``python run_bench.py``."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def section_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Evaluate your own model", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_evaluate_your_own_model_runs_as_written(tmp_path):
    blocks = section_blocks()
    assert [kind for kind, _ in blocks] == ["python", "python", "toml", "bash"]
    (model_file, script), (_, entry), (_, commands) = blocks[:2], blocks[2], blocks[3]
    (tmp_path / "my_vae.py").write_text(model_file[1])
    (tmp_path / "script.py").write_text(script[1])
    ran = subprocess.run(
        [sys.executable, "script.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "bench")},
    )
    assert ran.returncode == 0, ran.stderr
    assert re.search(r"log p\(x\) >= -\d+\.\d\d ± \d\.\d\d nats", ran.stdout)
    (tmp_path / "my_models" / "my-vae").mkdir(parents=True)
    (tmp_path / "my_models" / "my-vae" / "entry.toml").write_text(entry)
    shell = f'set -e\nvaebench() {{ "{sys.executable}" "{ROOT / "run_bench.py"}" "$@"; }}\n{commands}'
    ran = subprocess.run(["bash", "-c", shell], cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "check: 5 of 5 metrics within tolerance" in ran.stdout
    metrics = pd.read_csv(tmp_path / "results" / "metrics.csv")
    assert {"my-vae", "my-vae-once", "digits-standard"} <= set(metrics.model)
    same = metrics.set_index("model").loc[["my-vae", "my-vae-once"], "log_likelihood"]
    assert same.iloc[0] == same.iloc[1]  # the entry and the one-off form: one model, one number
    tables = (tmp_path / "results" / "tables.md").read_text()
    assert "| my-vae |" in tables and "| My paper 2026 |" in tables
    assert list((tmp_path / "results" / "compare").glob("my-vae_vs_digits-standard*.csv"))
