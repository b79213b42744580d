"""Datasets by name, as binary tensors of shape [N, D] with values in {0, 1}.

``load_dataset(name, data_dir)`` returns a :class:`Dataset` with ``train``, ``valid`` and ``test``
splits. Dynamically binarized datasets (``mnist``, ``fashion-mnist``) also keep the grey
intensities of the training split in ``train_probs``: training draws a fresh Bernoulli sample
from them every epoch, while ``train``, ``valid`` and ``test`` are one fixed, seeded draw.

The data directory is the ``data_dir`` argument, else ``$VAEBENCH_DATA``, else
``~/.cache/vaebench/data``. Its layout is the canonical one::

    BinarizedMNIST/binarized_mnist_{train,valid,test}.amat
    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
"""
from __future__ import annotations

import hashlib
import os
import pickle
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaebench.protocol.files import atomic_path

AMAT_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"
AMAT_SPLITS = {"train": 50_000, "valid": 10_000, "test": 10_000}
IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
DATASETS = ("binarized-mnist", "mnist", "fashion-mnist", "digits")


class DataError(RuntimeError):
    """A dataset is missing, corrupt or not binary; the message names the file and the fix."""


@dataclass
class Dataset:
    """Binary splits of shape [N, D]; ``train_probs`` holds grey levels for dynamic binarization."""

    name: str
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    train_probs: torch.Tensor | None = None
    image_shape: tuple[int, int] = (28, 28)

    def __post_init__(self) -> None:
        for split in ("train", "valid", "test"):
            if len(getattr(self, split)) == 0:
                raise DataError(f"{self.name}: the {split} split has no images; check the data files and the "
                                "validation size")

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    def training_epoch_data(self, generator: torch.Generator) -> torch.Tensor:
        """The training data for one epoch: a fresh binarization when dynamic, else ``train``."""
        if self.train_probs is None:
            return self.train
        return torch.bernoulli(self.train_probs, generator=generator)


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data directory: ``path``, else ``$VAEBENCH_DATA``, else ``~/.cache/vaebench/data``."""
    if path is not None:
        return Path(path)
    if os.environ.get("VAEBENCH_DATA"):
        return Path(os.environ["VAEBENCH_DATA"])
    return Path.home() / ".cache" / "vaebench" / "data"


def cache_dir() -> Path:
    """Where parsed copies of slow-to-read files go: ``$VAEBENCH_CACHE`` or ``~/.cache/vaebench``."""
    return Path(os.environ.get("VAEBENCH_CACHE", Path.home() / ".cache" / "vaebench"))


def load_dataset(name: str, root: str | os.PathLike | None = None, n_valid: int | None = None,
                 binarize_seed: int = 123) -> Dataset:
    """Load a dataset by name.

    Args:
        name: one of ``binarized-mnist``, ``mnist``, ``fashion-mnist``, ``digits``.
        root: data directory (see :func:`data_dir`).
        n_valid: for ``mnist``/``fashion-mnist``, how many of the last official training images
            form the validation split (default 10,000 as in the VampPrior paper; IWAE used 400).
        binarize_seed: seed of the fixed Bernoulli draw of the evaluation splits.
    """
    if name == "binarized-mnist":
        return load_binarized_mnist(data_dir(root))
    if name in ("mnist", "fashion-mnist"):
        return load_dynamic_mnist(name, data_dir(root), 10_000 if n_valid is None else n_valid, binarize_seed)
    if name == "digits":
        return load_digits()
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def load_binarized_mnist(root: Path) -> Dataset:
    """Static binarized MNIST (Larochelle & Murray), 50,000 / 10,000 / 10,000 from ``.amat`` text."""
    folder = root / "BinarizedMNIST"
    paths = {s: folder / f"binarized_mnist_{s}.amat" for s in AMAT_SPLITS}
    missing = [p for p in paths.values() if not p.is_file()]
    if missing:
        _download_amat(folder, missing)
    splits = {}
    for split, path in paths.items():
        x = _cached_amat(path)
        if x.shape[0] != AMAT_SPLITS[split]:
            raise DataError(f"{path}: {x.shape[0]} images, expected {AMAT_SPLITS[split]}; "
                            "the file is truncated or not the canonical one: delete it and download it again")
        splits[split] = x
    return Dataset("binarized-mnist", splits["train"], splits["valid"], splits["test"])


def _download_amat(folder: Path, missing: list[Path]) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path in missing:
            split = path.stem.rsplit("_", 1)[1]
            urllib.request.urlretrieve(AMAT_URL.format(split=split), path.with_suffix(".part"))
            path.with_suffix(".part").rename(path)
    except OSError as err:
        raise DataError(
            f"missing {', '.join(str(p) for p in missing)} and could not download them ({err}). "
            f"Put binarized_mnist_{{train,valid,test}}.amat under {folder} or set VAEBENCH_DATA "
            "to a directory holding BinarizedMNIST/") from None


def _cached_amat(path: Path) -> torch.Tensor:
    """Parse an ``.amat`` file once and keep a binary copy in :func:`cache_dir`."""
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"{path.stem}-{key}.pt"
    if cached.is_file():
        try:
            return torch.load(cached, weights_only=True).float()
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError):
            cached.unlink(missing_ok=True)
    x = parse_amat(path)
    with atomic_path(cached) as tmp:
        torch.save(x.to(torch.uint8), tmp)
    return x


def parse_amat(path: Path, dim: int = 784) -> torch.Tensor:
    """Parse binary ``.amat`` text (one image a line, ``dim`` values 0/1 separated by spaces)."""
    raw = path.read_bytes()
    row = 2 * dim
    buf = np.frombuffer(raw, dtype=np.uint8)
    if len(buf) % row == 0 and len(buf) > 0:
        grid = buf.reshape(-1, row)
        values, seps = grid[:, 0::2], grid[:, 1::2]
        if (np.isin(values, (48, 49)).all() and (seps[:, :-1] == 32).all() and (seps[:, -1] == 10).all()):
            return torch.from_numpy((values == 49).astype(np.float32))
    return _parse_amat_slow(path, dim)


def _parse_amat_slow(path: Path, dim: int) -> torch.Tensor:
    rows = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if len(fields) != dim:
                raise DataError(f"{path}, line {number}: {len(fields)} values, expected {dim}; "
                                "the file is truncated or corrupt: delete it and download it again")
            try:
                values = [float(v) for v in fields]
            except ValueError:
                raise DataError(f"{path}, line {number}: a value is not a number") from None
            if any(v not in (0.0, 1.0) for v in values):
                raise DataError(f"{path}, line {number}: values other than 0 and 1; "
                                "this loader reads the binarized MNIST files only")
            rows.append(values)
    if not rows:
        raise DataError(f"{path} is empty: delete it and download it again")
    return torch.tensor(rows, dtype=torch.float32)


def load_dynamic_mnist(name: str, root: Path, n_valid: int, binarize_seed: int) -> Dataset:
    """MNIST or Fashion-MNIST through torchvision; the last ``n_valid`` training images validate."""
    from torchvision import datasets

    cls, folder = {"mnist": (datasets.MNIST, "MNIST"), "fashion-mnist": (datasets.FashionMNIST, "FashionMNIST")}[name]
    raw = root / folder / "raw"
    missing = [f for f in IDX_FILES if not (raw / f).is_file()]
    if not 0 < n_valid < 60_000:
        raise DataError(f"n_valid={n_valid}: choose a validation size between 1 and 59,999")
    try:
        train = cls(str(root), train=True, download=bool(missing)).data
        test = cls(str(root), train=False, download=False).data
    except (RuntimeError, OSError, ValueError, AssertionError) as err:
        raise DataError(
            f"{name}: could not read the IDX files under {raw} ({type(err).__name__}: {err}). "
            f"Expected {', '.join(IDX_FILES)} (uncompressed) there, or set VAEBENCH_DATA to a directory "
            f"holding {folder}/raw/") from None
    probs = train.reshape(len(train), -1).float() / 255.0
    test_probs = test.reshape(len(test), -1).float() / 255.0
    gen = torch.Generator().manual_seed(binarize_seed)
    fixed_train = torch.bernoulli(probs, generator=gen)
    fixed_test = torch.bernoulli(test_probs, generator=gen)
    cut = len(probs) - n_valid
    return Dataset(name, fixed_train[:cut], fixed_train[cut:], fixed_test, train_probs=probs[:cut])


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits, thresholded at half intensity: 1197 / 300 / 300, D = 64."""
    from sklearn.datasets import load_digits as sk_digits

    images = torch.from_numpy(sk_digits().data).float()
    x = (images > 8).float()[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))]
    return Dataset("digits", x[:1197], x[1197:1497], x[1497:], image_shape=(8, 8))


def check_binary(x: torch.Tensor, what: str = "data") -> None:
    """Raise :class:`DataError` unless ``x`` is non-empty and every value is 0 or 1."""
    if x.numel() == 0:
        raise DataError(f"{what} is empty: check the split and the test-subset size")
    bad = ~((x == 0) | (x == 1))
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise DataError(f"{what} holds values other than 0 and 1 (first at index {index}: {float(x[index])}); "
                        "a Bernoulli model needs binary data: binarize it first (e.g. torch.bernoulli(x))")
