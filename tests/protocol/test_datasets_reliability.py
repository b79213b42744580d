"""Attacks on the dataset files ("Reliability, round two"): every file read is checked for its shape, count,
range and kind, errors name the file, and the optional .amat cache never stops a run.

The real files come from ``$VAEBENCH_DATA`` (default ``../shared/datasets``); each test links or crafts its
files under ``tmp_path`` and never writes to the shared folder."""

import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vaebench.protocol import datasets
from vaebench.protocol.datasets import DataError, check_amat_split, load_dataset, parse_amat
from vaebench.protocol.files import content_digest

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("VAEBENCH_DATA") or ROOT.parent / "shared" / "datasets")
IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
AMAT = tuple(f"binarized_mnist_{split}.amat" for split in ("train", "valid", "test"))
needs_idx = pytest.mark.skipif(
    not (SHARED / "MNIST" / "raw").is_dir() or not (SHARED / "FashionMNIST").is_dir(),
    reason="no VAEBENCH_DATA with the MNIST and Fashion-MNIST IDX files",
)
needs_amat = pytest.mark.skipif(
    not (SHARED / "BinarizedMNIST").is_dir(), reason="no VAEBENCH_DATA with the binarized MNIST .amat files"
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEBENCH_CACHE", str(tmp_path / "cache"))


def link_files(source: Path, target: Path, names: tuple[str, ...]) -> None:
    """Symbolic links in ``target`` to the real files: the loaders read them, nothing is copied or changed."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        (target / name).unlink(missing_ok=True)
        (target / name).symlink_to(source / name)


def idx_root(tmp_path: Path, source: str = "MNIST", folder: str = "MNIST") -> Path:
    """A data directory whose ``folder/raw`` links to the real ``source/raw`` IDX files."""
    link_files(SHARED / source / "raw", tmp_path / "data" / folder / "raw", IDX)
    return tmp_path / "data"


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes (magic 0x0800 + number of dimensions), replacing a link if there is one."""
    path.unlink(missing_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


# --- IDX (mnist, fashion-mnist) -------------------------------------------------------------------------


@needs_idx
def test_canonical_idx_files_pass_every_check(tmp_path):
    data = load_dataset("mnist", idx_root(tmp_path))
    assert (len(data.train), len(data.valid), len(data.test)) == (50_000, 10_000, 10_000)
    fashion = datasets.read_idx_pair("fashion-mnist", SHARED / "FashionMNIST" / "raw", "t10k")
    assert fashion.shape == (10_000, 28, 28) and fashion.dtype == torch.uint8


@needs_idx
def test_idx_test_file_of_5000_images_is_refused(tmp_path):
    root = idx_root(tmp_path)
    raw = root / "MNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", read_idx(SHARED / "MNIST" / "raw" / "t10k-images-idx3-ubyte")[:5000])
    with pytest.raises(
        DataError,
        match=r"t10k-images-idx3-ubyte holds 5,000 images \(its header\), expected "
        r"10,000, the canonical count; put the canonical MNIST files",
    ):
        load_dataset("mnist", root)
    link_files(SHARED / "MNIST" / "raw", raw, ("t10k-images-idx3-ubyte",))
    write_idx(raw / "t10k-labels-idx1-ubyte", read_idx(SHARED / "MNIST" / "raw" / "t10k-labels-idx1-ubyte")[:5000])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte holds 5,000 labels \(its header\), expected 10,000"):
        load_dataset("mnist", root)


@needs_idx
def test_fashion_mnist_files_under_mnist_are_named_for_what_they_are(tmp_path):
    with pytest.raises(
        DataError,
        match=r"MNIST/raw/train-images-idx3-ubyte looks like Fashion-MNIST, not MNIST: "
        r"its images have mean intensity 0.286, expected 0.10 to 0.17 for MNIST",
    ):
        load_dataset("mnist", idx_root(tmp_path, source="FashionMNIST", folder="MNIST"))
    with pytest.raises(DataError, match="looks like MNIST, not Fashion-MNIST: its images have mean intensity 0.131"):
        load_dataset("fashion-mnist", idx_root(tmp_path, source="MNIST", folder="FashionMNIST"))


@needs_idx
def test_fashion_mnist_labels_beside_mnist_images_are_refused(tmp_path):
    root = idx_root(tmp_path)
    link_files(SHARED / "FashionMNIST" / "raw", root / "MNIST" / "raw", ("train-labels-idx1-ubyte",))
    with pytest.raises(
        DataError, match="train-labels-idx1-ubyte is Fashion-MNIST's canonical labels file, expected MNIST's labels"
    ):
        load_dataset("mnist", root)


@needs_idx
def test_idx_images_of_32x24_pixels_are_refused_with_the_size_found(tmp_path):
    root = idx_root(tmp_path)
    write_idx(root / "MNIST" / "raw" / "t10k-images-idx3-ubyte", np.zeros((10_000, 32, 24)))
    with pytest.raises(
        DataError,
        match=r"t10k-images-idx3-ubyte holds images of 32x24 pixels \(rows x columns in "
        r"its header\), expected 28x28",
    ):
        load_dataset("mnist", root)


@needs_idx
def test_idx_file_with_bytes_cut_or_appended_is_refused(tmp_path):
    root = idx_root(tmp_path)
    path = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels = path.read_bytes()
    for damaged in (labels[:-3], labels + b"\0\0"):
        path.unlink()
        path.write_bytes(damaged)
        with pytest.raises(
            DataError,
            match="t10k-labels-idx1-ubyte holds .* bytes after its header, expected "
            r"10,000 for 10,000 labels \(it is truncated or has bytes appended\)",
        ):
            load_dataset("mnist", root)


@needs_idx
def test_labels_outside_0_to_9_are_refused(tmp_path):
    root = idx_root(tmp_path)
    labels = read_idx(SHARED / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").copy()
    labels[17] = 42
    write_idx(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte holds the label 42, expected digits 0..9"):
        load_dataset("mnist", root)


# --- .amat (binarized-mnist) ------------------------------------------------------------------------------


def amat_root(tmp_path: Path) -> Path:
    link_files(SHARED / "BinarizedMNIST", tmp_path / "data" / "BinarizedMNIST", AMAT)
    return tmp_path / "data"


@needs_amat
def test_all_zero_amat_split_is_refused(tmp_path):
    root = amat_root(tmp_path)
    path = root / "BinarizedMNIST" / "binarized_mnist_train.amat"
    path.unlink()
    path.write_bytes((b"0 " * 783 + b"0\n") * 50_000)  # the canonical count and line format, every pixel off
    with pytest.raises(
        DataError,
        match=r"binarized_mnist_train.amat: 0.0% of the pixels are ones, expected 5% to "
        r"50% \(the canonical files have about 13%\)",
    ):
        load_dataset("binarized-mnist", root)


def test_all_one_constant_or_repeated_amat_splits_are_refused(tmp_path):
    path = tmp_path / "binarized_mnist_valid.amat"
    with pytest.raises(DataError, match=r"binarized_mnist_valid.amat: 100.0% of the pixels are ones"):
        check_amat_split(torch.ones(20, 784), path, 20)
    digit = (torch.rand(784, generator=torch.Generator().manual_seed(0)) < 0.13).float()
    with pytest.raises(DataError, match="binarized_mnist_valid.amat: all 20 images are identical"):
        check_amat_split(digit.repeat(20, 1), path, 20)
    inverted = 1 - (torch.rand(20, 784, generator=torch.Generator().manual_seed(1)) < 0.13).float()
    with pytest.raises(DataError, match=r"8\d\.\d% of the pixels are ones"):
        check_amat_split(inverted, path, 20)
    check_amat_split(1 - inverted, path, 20)  # plausible digits pass


def small_amat(path: Path, n: int = 6) -> torch.Tensor:
    x = (torch.rand(n, 784, generator=torch.Generator().manual_seed(n)) < 0.13).to(torch.uint8)
    path.write_bytes(b"".join(b" ".join(b"%d" % v for v in row.tolist()) + b"\n" for row in x))
    return x.float()


@needs_amat
def test_cache_folder_that_is_a_file_gives_one_warning_and_the_data(tmp_path, monkeypatch):
    root = amat_root(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file, not a folder\n")
    monkeypatch.setenv("VAEBENCH_CACHE", str(blocker))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # the filter every run has: identical warnings are shown once
        data = load_dataset("binarized-mnist", root)
    assert (len(data.train), len(data.valid), len(data.test)) == (50_000, 10_000, 10_000)
    messages = {str(w.message) for w in caught}
    assert len(messages) == 1, messages
    assert f"cache folder {blocker} cannot be written" in messages.pop()
    assert blocker.read_text() == "a file, not a folder\n"


def test_read_only_cache_folder_gives_a_warning_and_the_data(tmp_path, monkeypatch):
    cache = tmp_path / "read-only"
    cache.mkdir()
    cache.chmod(0o555)
    monkeypatch.setenv("VAEBENCH_CACHE", str(cache))
    if os.access(cache, os.W_OK):  # root ignores the mode bits: refuse writes there as the file system would
        real_save = torch.save

        def refuse(obj, f, *args, **kwargs):
            if Path(f).parent == cache:
                raise PermissionError(13, "Permission denied", str(f))
            return real_save(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", refuse)
    want = small_amat(tmp_path / "binarized_mnist_test.amat")
    try:
        with pytest.warns(UserWarning, match=f"cache folder {cache} cannot be written .*Permission denied"):
            got = datasets._cached_amat(tmp_path / "binarized_mnist_test.amat")
    finally:
        cache.chmod(0o755)
    assert torch.equal(got, want)
    assert list(cache.iterdir()) == []


def test_cache_key_holds_the_parser_version_and_bad_cached_copies_are_parsed_again(tmp_path, monkeypatch):
    path = tmp_path / "binarized_mnist_test.amat"
    want = small_amat(path)
    assert torch.equal(datasets._cached_amat(path), want)
    first = datasets._cache_path(path, 784)
    assert first.is_file()
    monkeypatch.setattr(datasets, "AMAT_PARSER_VERSION", datasets.AMAT_PARSER_VERSION + 1)
    assert datasets._cache_path(path, 784) != first  # a new parser never reads an old parser's copies
    assert torch.equal(datasets._cached_amat(path), want)
    good = torch.load(datasets._cache_path(path, 784), weights_only=True)
    flipped = good["data"].clone()
    flipped[2, 100] ^= 1  # a bit flipped on disk: still binary, still loadable, caught by the checksum
    for poison in (
        {"data": torch.full((6, 784), 2, dtype=torch.uint8)},
        {"data": torch.zeros(6, 783, dtype=torch.uint8)},
        {"data": torch.zeros(6, 784)},
        {"data": flipped, "digest": good["digest"]},
        good["data"],  # the layout before cache format 2
        {"not": "a tensor"},
    ):
        if isinstance(poison, dict) and "data" in poison and "digest" not in poison:
            poison["digest"] = content_digest(poison["data"])
        torch.save(poison, datasets._cache_path(path, 784))
        assert torch.equal(datasets._cached_amat(path), want)
    datasets._cache_path(path, 784).write_bytes(b"truncated")
    assert torch.equal(datasets._cached_amat(path), want)
    assert torch.equal(parse_amat(path), want)


@needs_amat
def test_swapped_valid_and_test_amat_files_are_refused(tmp_path):
    """The two files have the same size, count and statistics: only their content tells them apart."""
    folder = tmp_path / "data" / "BinarizedMNIST"
    folder.mkdir(parents=True)
    for name, source in (("train", "train"), ("valid", "test"), ("test", "valid")):
        (folder / f"binarized_mnist_{name}.amat").symlink_to(
            SHARED / "BinarizedMNIST" / f"binarized_mnist_{source}.amat"
        )
    load_dataset("binarized-mnist")  # the real files' copies in the cache must not stand in for the links
    with pytest.raises(
        DataError, match=r"binarized_mnist_valid\.amat is the canonical test split .*not the valid split"
    ):
        load_dataset("binarized-mnist", tmp_path / "data")
