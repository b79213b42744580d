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

Every file read is checked against the canonical one: IDX files for their header (magic number, 28x28
images, 60,000 / 10,000 images and labels), length, mean intensity (MNIST's files are not Fashion-MNIST's)
and labels; ``.amat`` splits for their count and fraction of ones. ``.amat`` parses are cached in
:func:`cache_dir`, keyed by the parser version and the file's path, size and modification time; the cache is
optional (an unwritable one gives a warning).
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaebench.protocol.files import atomic_path

AMAT_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"
AMAT_SPLITS = {"train": 50_000, "valid": 10_000, "test": 10_000}
AMAT_PARSER_VERSION = 2  # part of the cache key: bump it whenever parse_amat's output changes
AMAT_MEAN_RANGE = (0.05, 0.5)  # plausible fraction of ones per split; the canonical files have about 0.13
IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
IDX_IMAGES, IDX_LABELS = 0x0803, 0x0801  # IDX magic numbers: unsigned bytes, 3 (images) or 1 (labels) dimensions
IMAGE_SIZE = (28, 28)
DATASETS = ("binarized-mnist", "mnist", "fashion-mnist", "digits")


@dataclass(frozen=True)
class IdxSpec:
    """What a dataset's canonical IDX files hold: their folder, the number of images in the ``train`` and
    ``t10k`` files, the range of their images' mean intensity (0..1) and the SHA-256 of their labels (the
    bytes after the header)."""

    folder: str
    title: str
    counts: dict[str, int]
    intensity: tuple[float, float]
    label_sha256: dict[str, str]


# Mean intensities of the canonical images: MNIST 0.131 (train) and 0.133 (t10k), Fashion-MNIST 0.286 and 0.287.
# The ranges lie far apart, so a file of one dataset in the other's folder is named for what it is.
IDX_SPECS = {
    "mnist": IdxSpec(
        "MNIST",
        "MNIST",
        {"train": 60_000, "t10k": 10_000},
        (0.10, 0.17),
        {
            "train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
            "t10k": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
        },
    ),
    "fashion-mnist": IdxSpec(
        "FashionMNIST",
        "Fashion-MNIST",
        {"train": 60_000, "t10k": 10_000},
        (0.24, 0.33),
        {
            "train": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
            "t10k": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
        },
    ),
}


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
                raise DataError(
                    f"{self.name}: the {split} split has no images; check the data files and the validation size"
                )

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
    return Path(os.environ.get("VAEBENCH_CACHE") or Path.home() / ".cache" / "vaebench")


def load_dataset(
    name: str, root: str | os.PathLike | None = None, n_valid: int | None = None, binarize_seed: int = 123
) -> Dataset:
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
        splits[split] = _cached_amat(path)
        check_amat_split(splits[split], path, AMAT_SPLITS[split])
    return Dataset("binarized-mnist", splits["train"], splits["valid"], splits["test"])


def check_amat_split(x: torch.Tensor, path: Path, count: int) -> None:
    """Check a parsed ``.amat`` split: ``count`` images, a plausible fraction of ones
    (:data:`AMAT_MEAN_RANGE`) and not every image the same; a :class:`DataError` naming ``path`` otherwise."""
    fix = "the file is truncated or not the canonical one: delete it and download it again"
    if x.shape[0] != count:
        raise DataError(f"{path}: {x.shape[0]} images, expected {count}; {fix}")
    mean, (low, high) = float(x.mean(dtype=torch.float64)), AMAT_MEAN_RANGE
    if not low <= mean <= high:
        raise DataError(
            f"{path}: {mean:.1%} of the pixels are ones, expected {low:.0%} to {high:.0%} (the canonical "
            f"files have about 13%); blank, inverted or not binarized MNIST images: {fix}"
        )
    if not (x != x[0]).any():
        raise DataError(f"{path}: all {count} images are identical, expected {count} different digits; {fix}")


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
            "to a directory holding BinarizedMNIST/"
        ) from None


def _cached_amat(path: Path, dim: int = 784) -> torch.Tensor:
    """Parse an ``.amat`` file once and keep a binary copy in :func:`cache_dir`. The cache is optional: an
    unusable cache folder gives one warning and the file is parsed directly."""
    cached = _cache_path(path, dim)
    x = _read_cache(cached, dim)
    if x is not None:
        return x
    x = parse_amat(path, dim)
    try:
        with atomic_path(cached) as tmp:
            torch.save(x.to(torch.uint8), tmp)
    except OSError as err:
        warnings.warn(
            f"cache folder {cached.parent} cannot be written ({type(err).__name__}: "
            f"{err.strerror or err}); reading the .amat files without a cache, which is slower: set "
            "VAEBENCH_CACHE to a writable folder",
            stacklevel=2,
        )
    return x


def _cache_path(path: Path, dim: int) -> Path:
    """The cached copy of ``path``, keyed by what fixes its content: the parser version, ``dim`` and the file
    (resolved path, size, modification time)."""
    stat = path.stat()
    identity = f"v{AMAT_PARSER_VERSION}:{dim}:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return cache_dir() / f"{path.stem}-{hashlib.sha1(identity.encode()).hexdigest()[:16]}.pt"


def _read_cache(cached: Path, dim: int) -> torch.Tensor | None:
    """The cached parse as float32, or None when it is missing, unreadable or not a uint8 [N, ``dim``] tensor
    of 0/1 (then the file is parsed again and the copy replaced)."""
    try:
        if not cached.is_file():
            return None
        x = torch.load(cached, weights_only=True)
    except Exception:  # any damage (torch.load raises IndexError, EOFError, ...) means parse again
        return None
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 2 or x.shape[1] != dim:
        return None
    if x.numel() == 0 or bool((x > 1).any()):
        return None
    return x.float()


def parse_amat(path: Path, dim: int = 784) -> torch.Tensor:
    """Parse binary ``.amat`` text (one image a line, ``dim`` values 0/1 separated by spaces)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(
            f"{path} cannot be read ({err.strerror or err}): check its permissions, or delete it and download it again"
        ) from None
    row = 2 * dim
    buf = np.frombuffer(raw, dtype=np.uint8)
    if len(buf) % row == 0 and len(buf) > 0:
        grid = buf.reshape(-1, row)
        values, seps = grid[:, 0::2], grid[:, 1::2]
        if np.isin(values, (48, 49)).all() and (seps[:, :-1] == 32).all() and (seps[:, -1] == 10).all():
            return torch.from_numpy((values == 49).astype(np.float32))
    return _parse_amat_slow(path, dim)


def _parse_amat_slow(path: Path, dim: int) -> torch.Tensor:
    rows = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if len(fields) != dim:
                raise DataError(
                    f"{path}, line {number}: {len(fields)} values, expected {dim}; "
                    "the file is truncated or corrupt: delete it and download it again"
                )
            try:
                values = [float(v) for v in fields]
            except ValueError:
                raise DataError(f"{path}, line {number}: a value is not a number") from None
            if any(v not in (0.0, 1.0) for v in values):
                raise DataError(
                    f"{path}, line {number}: values other than 0 and 1; "
                    "this loader reads the binarized MNIST files only"
                )
            rows.append(values)
    if not rows:
        raise DataError(f"{path} is empty: delete it and download it again")
    return torch.tensor(rows, dtype=torch.float32)


def load_dynamic_mnist(name: str, root: Path, n_valid: int, binarize_seed: int) -> Dataset:
    """MNIST or Fashion-MNIST from their canonical IDX files (checked by :func:`read_idx_pair`); the last
    ``n_valid`` training images validate. Missing files are downloaded through torchvision."""
    spec = IDX_SPECS[name]
    raw = root / spec.folder / "raw"
    if not 0 < n_valid < spec.counts["train"]:
        raise DataError(f"n_valid={n_valid}: choose a validation size between 1 and {spec.counts['train'] - 1:,}")
    if any(not (raw / f).is_file() for f in IDX_FILES):
        _download_idx(name, root)
    train = read_idx_pair(name, raw, "train")
    test = read_idx_pair(name, raw, "t10k")
    probs = train.reshape(len(train), -1).float() / 255.0
    test_probs = test.reshape(len(test), -1).float() / 255.0
    gen = torch.Generator().manual_seed(binarize_seed)
    fixed_train = torch.bernoulli(probs, generator=gen)
    fixed_test = torch.bernoulli(test_probs, generator=gen)
    cut = len(probs) - n_valid
    return Dataset(name, fixed_train[:cut], fixed_train[cut:], fixed_test, train_probs=probs[:cut])


def _download_idx(name: str, root: Path) -> None:
    """Fetch missing IDX files through torchvision (which checks their MD5); a :class:`DataError` otherwise."""
    from torchvision import datasets

    spec = IDX_SPECS[name]
    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[name]
    try:
        cls(str(root), train=True, download=True)
    except (RuntimeError, OSError, ValueError, AssertionError) as err:
        raw = root / spec.folder / "raw"
        raise DataError(
            f"{name}: could not read the IDX files under {raw} ({type(err).__name__}: {str(err).splitlines()[0]}). "
            f"Expected {', '.join(IDX_FILES)} (uncompressed) there, or set VAEBENCH_DATA to a directory "
            f"holding {spec.folder}/raw/"
        ) from None


class _IdxProblem(Exception):
    """One IDX file's problem: the file name, what it holds and what was expected."""

    def __init__(self, file: str, found: str, expected: str) -> None:
        super().__init__(file, found, expected)
        self.file, self.found, self.expected = file, found, expected


def read_idx_pair(name: str, raw: Path, prefix: str) -> torch.Tensor:
    """The images [N, 28, 28] (uint8) of ``raw/PREFIX-images-idx3-ubyte``, after checking it and its labels
    file: the IDX header (magic number, 28x28 images, the canonical count), the length, that the images look
    like ``name``'s (mean intensity), and that the labels are digits 0..9, one per image, and not another
    dataset's. A :class:`DataError` naming the file, what it holds, what was expected and the fix otherwise."""
    spec = IDX_SPECS[name]
    count = spec.counts[prefix]
    images_path, labels_path = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
    try:
        images = _read_idx(images_path, IDX_IMAGES, (count, *IMAGE_SIZE))
        labels = _read_idx(labels_path, IDX_LABELS, (count,))
        _check_intensity(name, images_path, images)
        _check_labels(name, prefix, labels_path, labels, len(images))
    except _IdxProblem as err:
        raise DataError(
            f"could not read the IDX files of {name}: {raw / err.file} {err.found}, expected {err.expected}; put "
            f"the canonical {spec.title} files ({', '.join(IDX_FILES)}, uncompressed) in {raw}, or delete them "
            f"to download them again, or set VAEBENCH_DATA to a directory holding {spec.folder}/raw/"
        ) from None
    return torch.from_numpy(images)


def _read_idx(path: Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 array of an IDX file after checking its magic number, its dimensions against ``shape``
    (image size first, then count) and that its length is what its header promises."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise _IdxProblem(path.name, f"cannot be read ({err.strerror or err})", "a readable file") from None
    header = 4 + 4 * len(shape)
    if len(raw) < header:
        raise _IdxProblem(path.name, f"is {len(raw)} bytes long", f"an IDX header of {header} bytes, then data")
    found_magic = int.from_bytes(raw[:4], "big")
    if found_magic != magic:
        what = "images: unsigned bytes, 3 dimensions" if magic == IDX_IMAGES else "labels: unsigned bytes, 1 dimension"
        raise _IdxProblem(path.name, f"has the magic number 0x{found_magic:08x}", f"0x{magic:08x} ({what})")
    dims = tuple(int.from_bytes(raw[i : i + 4], "big") for i in range(4, header, 4))
    if dims[1:] != shape[1:]:
        found, expected = "x".join(map(str, dims[1:])), "x".join(map(str, shape[1:]))
        raise _IdxProblem(path.name, f"holds images of {found} pixels (rows x columns in its header)", expected)
    kind = "images" if magic == IDX_IMAGES else "labels"
    if dims[0] != shape[0]:
        raise _IdxProblem(path.name, f"holds {dims[0]:,} {kind} (its header)", f"{shape[0]:,}, the canonical count")
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise _IdxProblem(
            path.name,
            f"holds {len(raw) - header:,} bytes after its header",
            f"{size:,} for {shape[0]:,} {kind} (it is truncated or has bytes appended)",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _check_intensity(name: str, path: Path, images: np.ndarray) -> None:
    """Raise unless the images' mean intensity lies in ``name``'s range; say which dataset they look like."""
    mean = float(images.mean(dtype=np.float64)) / 255.0
    spec = IDX_SPECS[name]
    low, high = spec.intensity
    if low <= mean <= high:
        return
    looks = [s.title for other, s in IDX_SPECS.items() if other != name and s.intensity[0] <= mean <= s.intensity[1]]
    found = f"looks like {looks[0]}, not {spec.title}" if looks else f"does not look like {spec.title}"
    raise _IdxProblem(
        path.name, f"{found}: its images have mean intensity {mean:.3f}", f"{low:.2f} to {high:.2f} for {spec.title}"
    )


def _check_labels(name: str, prefix: str, path: Path, labels: np.ndarray, n_images: int) -> None:
    """Raise unless the labels are one digit 0..9 per image and not another dataset's canonical labels file."""
    if len(labels) != n_images:
        raise _IdxProblem(path.name, f"holds {len(labels):,} labels", f"one per image ({n_images:,})")
    if labels.max(initial=0) > 9:
        raise _IdxProblem(path.name, f"holds the label {int(labels.max())}", "digits 0..9")
    digest = hashlib.sha256(labels.tobytes()).hexdigest()
    for other, spec in IDX_SPECS.items():
        if other != name and spec.label_sha256.get(prefix) == digest:
            raise _IdxProblem(
                path.name, f"is {spec.title}'s canonical labels file", f"{IDX_SPECS[name].title}'s labels"
            )


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
        raise DataError(
            f"{what} holds values other than 0 and 1 (first at index {index}: {float(x[index])}); "
            "a Bernoulli model needs binary data: binarize it first (e.g. torch.bernoulli(x))"
        )
