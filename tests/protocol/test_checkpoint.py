"""Attacks on checkpoint files ("Reliability, round two"): a checkpoint of the wrong structure or dtype is a
CheckpointError naming the file and what was expected, never a traceback or a silent cast; and the committed
models' per-example values do not depend on the evaluation batch size beyond float32 rounding."""

from pathlib import Path

import pytest
import torch

from vaebench.protocol import registry
from vaebench.protocol.checkpoint import CheckpointError, atomic_save, load_state

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "digits-standard"  # a committed checkpoint on a dataset that needs no files
EXPECTED = 'expected a dict with "model": a dict of tensors by name'


def builtin(name: str) -> registry.Entry:
    return registry.get(registry.load_registry([registry.builtin_registry()]), name)


def copied_entry(folder: Path, name: str = "mini", checkpoint: object | None = None) -> registry.Entry:
    """``digits-standard``'s entry under another name in ``folder/name``, with ``checkpoint`` saved beside it
    (default: the committed weights, their meta renamed)."""
    source = builtin(SOURCE)
    (folder / name).mkdir(parents=True)
    text = source.source.read_text().replace(f'name = "{SOURCE}"', f'name = "{name}"')
    (folder / name / "entry.toml").write_text(text)
    if checkpoint is None:
        saved = load_state(source.checkpoint)
        checkpoint = {"model": saved["model"], "meta": {**saved["meta"], "name": name}}
    torch.save(checkpoint, folder / name / "checkpoint.pt")
    return registry.get(registry.load_registry([folder]), name)


def committed_weights() -> dict[str, torch.Tensor]:
    return load_state(builtin(SOURCE).checkpoint)["model"]


# --- structure -------------------------------------------------------------------------------------------

BAD_STRUCTURES = {
    "bare tensor": (lambda w: torch.zeros(3), "holds a Tensor, not a dict"),
    "list": (lambda w: [w], "holds a list, not a dict"),
    "model is a list": (lambda w: {"model": list(w.values()), "meta": {}}, 'has a "model" that is a list'),
    "meta is a string": (lambda w: {"model": w, "meta": "trained by me"}, 'has a "meta" that is a str, not a dict'),
    "no model": (lambda w: {"meta": {"name": "mini"}}, "has no \"model\" entry \\(its keys: 'meta'\\)"),
    "empty": (lambda w: {}, 'has no "model" entry'),
    "empty model": (lambda w: {"model": {}}, 'has an empty "model"'),
    "string weight": (lambda w: {"model": {**w, "extra": "0.5"}}, "has a str under 'extra' in \"model\""),
    "sparse weight": (
        lambda w: {"model": {k: v.to_sparse() if v.ndim == 2 else v for k, v in w.items()}},
        r"has a torch.sparse_coo tensor under '.*' in \"model\", not a dense one",
    ),
    "meta weight": (
        lambda w: {"model": {k: v.to("meta") for k, v in w.items()}},
        r"has a meta tensor under '.*' in \"model\": shapes without values",
    ),
}


@pytest.mark.parametrize("case", BAD_STRUCTURES)
def test_checkpoint_of_the_wrong_structure_names_the_file_and_the_expected_structure(tmp_path, case):
    make, found = BAD_STRUCTURES[case]
    path = tmp_path / "checkpoint.pt"
    atomic_save(make(committed_weights()), path)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} {found}.*; {EXPECTED}"):
        load_state(path)


def test_bare_state_dict_still_loads(tmp_path):
    atomic_save(committed_weights(), tmp_path / "bare.pt")
    assert set(load_state(tmp_path / "bare.pt")) == set(committed_weights())
    entry = copied_entry(tmp_path / "reg", checkpoint=committed_weights())
    registry.load(entry)  # a bare state_dict is a documented checkpoint format


# --- dtypes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.int64, torch.float64])
def test_registry_refuses_weights_of_another_dtype_instead_of_casting_them(tmp_path, dtype):
    weights = {k: v.to(dtype) for k, v in committed_weights().items()}
    entry = copied_entry(tmp_path / "reg", checkpoint={"model": weights, "meta": {"name": "mini"}})
    with pytest.raises(
        CheckpointError,
        match=rf"checkpoint {entry.checkpoint} does not fit the model \(dtype: "
        rf".* {dtype} \(model torch.float32\)",
    ):
        registry.load(entry)


# --- batch size ------------------------------------------------------------------------------------------
