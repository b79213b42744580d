"""Loaders on small files written here in each dataset's real format, and their errors."""

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from vaebench.protocol.datasets import DataError, Dataset, check_binary, load_dataset, parse_amat

SHARED = Path(os.environ.get("VAEBENCH_DATA", "")) if os.environ.get("VAEBENCH_DATA") else None


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEBENCH_CACHE", str(tmp_path / "cache"))


def write_amat(path: Path, x: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(str(int(v)) for v in row) + "\n" for row in x))


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    magic = magic if magic is not None else 0x0800 + array.ndim
    path.write_bytes(
        struct.pack(">I", magic)
        + b"".join(struct.pack(">I", n) for n in array.shape)
        + array.astype(np.uint8).tobytes()
    )


@pytest.fixture
def small_idx(monkeypatch):
    """Expect small IDX files of any intensity (the canonical counts and intensities are tested on the real files in
    tests/protocol/test_datasets_reliability.py); call it with the counts that :func:`fake_mnist` writes."""
    from dataclasses import replace

    from vaebench.protocol import datasets

    def expect(n_train: int = 50, n_test: int = 20) -> None:
        for name, spec in list(datasets.IDX_SPECS.items()):
            small = replace(spec, counts={"train": n_train, "t10k": n_test}, intensity=(0.0, 1.0))
            monkeypatch.setitem(datasets.IDX_SPECS, name, small)

    return expect


def fake_mnist(root: Path, folder: str = "MNIST", n_train: int = 50, n_test: int = 20, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))


def test_parse_amat_round_trip(tmp_path):
    x = np.random.default_rng(0).integers(0, 2, (7, 784))
    write_amat(tmp_path / "a.amat", x)
    torch.testing.assert_close(parse_amat(tmp_path / "a.amat"), torch.tensor(x, dtype=torch.float32))


def test_parse_amat_ragged_line_names_the_line(tmp_path):
    x = np.ones((3, 784), dtype=int)
    write_amat(tmp_path / "a.amat", x)
    lines = (tmp_path / "a.amat").read_text().splitlines()
    lines[1] = lines[1][:-4]
    (tmp_path / "a.amat").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"a.amat, line 2: 782 values, expected 784"):
        parse_amat(tmp_path / "a.amat")


def test_parse_amat_rejects_non_binary_values(tmp_path):
    x = np.zeros((2, 784), dtype=int)
    x[1, 5] = 3
    write_amat(tmp_path / "a.amat", x)
    with pytest.raises(DataError, match="line 2: values other than 0 and 1"):
        parse_amat(tmp_path / "a.amat")


def test_binarized_mnist_wrong_size_and_missing_files(tmp_path, monkeypatch):
    folder = tmp_path / "BinarizedMNIST"
    for split in ("train", "valid", "test"):
        write_amat(folder / f"binarized_mnist_{split}.amat", np.zeros((4, 784), dtype=int))
    with pytest.raises(DataError, match="4 images, expected 50000"):
        load_dataset("binarized-mnist", tmp_path)
    (folder / "binarized_mnist_valid.amat").unlink()
    monkeypatch.setattr("urllib.request.urlretrieve", _no_network)
    with pytest.raises(DataError, match="binarized_mnist_valid.amat and could not download"):
        load_dataset("binarized-mnist", tmp_path)


def _no_network(*args, **kwargs):
    raise OSError("network unreachable")


def test_dynamic_mnist_split_and_fixed_binarization(tmp_path, small_idx):
    small_idx()
    fake_mnist(tmp_path)
    a = load_dataset("mnist", tmp_path, n_valid=10, binarize_seed=3)
    b = load_dataset("mnist", tmp_path, n_valid=10, binarize_seed=3)
    assert (a.train.shape, a.valid.shape, a.test.shape) == ((40, 784), (10, 784), (20, 784))
    assert a.train_probs.shape == (40, 784)
    for split in (a.train, a.valid, a.test):
        check_binary(split)
    torch.testing.assert_close(a.test, b.test)  # the evaluation draw is fixed by the seed
    gen = torch.Generator().manual_seed(0)
    epoch1, epoch2 = a.training_epoch_data(gen), a.training_epoch_data(gen)
    assert not torch.equal(epoch1, epoch2)  # training data are redrawn every epoch
    check_binary(epoch1)


def test_fashion_mnist_reads_its_own_folder(tmp_path, small_idx):
    small_idx(30, 5)
    fake_mnist(tmp_path, "FashionMNIST", n_train=30, n_test=5)
    data = load_dataset("fashion-mnist", tmp_path, n_valid=6)
    assert (len(data.train), len(data.valid), len(data.test)) == (24, 6, 5)


def test_idx_with_wrong_magic_number_is_a_clear_error(tmp_path, small_idx):
    small_idx()
    fake_mnist(tmp_path)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte", np.zeros((20, 28, 28)), magic=0x1234)
    with pytest.raises(DataError, match="could not read the IDX files"):
        load_dataset("mnist", tmp_path, n_valid=10)


def test_truncated_idx_file_is_a_clear_error(tmp_path, small_idx):
    small_idx()
    fake_mnist(tmp_path)
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])  # the header promises more pixels than follow
    with pytest.raises(DataError, match="could not read the IDX files"):
        load_dataset("mnist", tmp_path, n_valid=10)


def test_empty_split_is_refused(tmp_path, small_idx):
    small_idx(50, 0)
    fake_mnist(tmp_path, n_train=50, n_test=0)
    with pytest.raises(DataError, match="could not read the IDX files"):  # torchvision cannot read 0 images
        load_dataset("mnist", tmp_path, n_valid=10)
    with pytest.raises(DataError, match="the valid split has no images"):
        Dataset("made-up", torch.ones(3, 2), torch.ones(0, 2), torch.ones(3, 2))


def test_missing_idx_files_name_the_layout(tmp_path, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", _no_network)
    with pytest.raises(DataError, match="Expected train-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path / "nowhere", n_valid=10)


def test_digits_needs_no_download():
    data = load_dataset("digits")
    assert (data.train.shape, data.valid.shape, data.test.shape) == ((1197, 64), (300, 64), (300, 64))
    check_binary(data.train)


def test_unknown_dataset_and_bad_data():
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="values other than 0 and 1"):
        check_binary(torch.tensor([[0.0, 0.5]]))
    with pytest.raises(DataError, match="empty"):
        check_binary(torch.zeros(0, 3))


@pytest.mark.skipif(
    SHARED is None or not (SHARED / "BinarizedMNIST").is_dir(), reason="no VAEBENCH_DATA with the real files"
)
def test_real_binarized_mnist():
    data = load_dataset("binarized-mnist", SHARED)
    assert (data.train.shape, data.valid.shape, data.test.shape) == ((50000, 784), (10000, 784), (10000, 784))
    # the very bits the committed VampPrior-paper checkpoints were trained on (checksum in their JSON)
    from vaebench.protocol.registry import builtin_registry, data_checksum

    trained_on = json.loads((builtin_registry() / "vae-standard" / "checkpoint.json").read_text())["data_sha256"]
    assert data_checksum(data) == trained_on
