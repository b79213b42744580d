"""Datasets by name, as tensors of shape [N, D]: binary (values in {0, 1}) or 8-bit grey (``frey-faces``).

``load_dataset(name, data_dir)`` returns a :class:`Dataset` with ``train``, ``valid`` and ``test``
splits; ``Dataset.binary`` tells binary data (for Bernoulli decoders) from grey levels in [0, 1] that are
multiples of 1/255 (for continuous decoders, e.g. a discretized logistic). Dynamically binarized datasets
(``mnist``, ``fashion-mnist``, ``omniglot-28``) also keep the grey intensities of the training split in
``train_probs``: training draws a fresh Bernoulli sample from them every epoch, while ``train``, ``valid``
and ``test`` are one fixed, seeded draw.

The data directory is the ``data_dir`` argument, else ``$VAEBENCH_DATA``, else
``~/.cache/vaebench/data``. Its layout is the canonical one::

    BinarizedMNIST/binarized_mnist_{train,valid,test}.amat
    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    FreyFaces/freyfaces.pkl
    Caltech101Silhouettes/caltech101_silhouettes_28.mat
    Omniglot/images_{background,evaluation}.npz

Every file read is checked against the canonical one: IDX files for their header (magic number, 28x28
images, 60,000 / 10,000 images and labels), length, mean intensity (MNIST's files are not Fashion-MNIST's)
and labels; ``.amat`` splits for their count and fraction of ones; the Frey Faces pickle, the Caltech 101
Silhouettes ``.mat`` and the Omniglot ``.npz`` files for their shape, count, value range and polarity. The
Frey Faces pickle is read by a restricted unpickler that builds numpy arrays and nothing else. ``.amat``
parses and the resized Omniglot images are cached in :func:`cache_dir`, keyed by a format version and the
source files' path, size and modification time; the cache is optional (an unwritable one gives a warning).

Frey Faces, Caltech 101 Silhouettes and Omniglot have no usable official split in these files, so each is
split by a fixed permutation (:func:`split_permutation`, seeds in :data:`SPLIT_SEEDS`): results on them are
comparable in kind with the papers' numbers, not digit for digit.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaebench.protocol.files import atomic_path, content_digest

AMAT_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{split}.amat"
AMAT_SPLITS = {"train": 50_000, "valid": 10_000, "test": 10_000}
CACHE_FORMAT = 2  # part of every cache key: the layout of a cache file ({"data", "digest"} since 2)
AMAT_PARSER_VERSION = 2  # part of the cache key: bump it whenever parse_amat's output changes
# sha256 of the canonical files: a split found under another split's name (swapped valid and test files have the
# same size and statistics) is refused when the file is parsed.
AMAT_SHA256 = {
    "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}
AMAT_MEAN_RANGE = (0.05, 0.5)  # plausible fraction of ones per split; the canonical files have about 0.13
IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
IDX_IMAGES, IDX_LABELS = 0x0803, 0x0801  # IDX magic numbers: unsigned bytes, 3 (images) or 1 (labels) dimensions
IMAGE_SIZE = (28, 28)
DATASETS = (
    "binarized-mnist",
    "mnist",
    "fashion-mnist",
    "digits",
    "frey-faces",
    "caltech-silhouettes",
    "omniglot-28",
)

# Seeds of the fixed permutations that split the datasets without an official split (split_permutation).
# The VampPrior code shuffled Frey Faces without a seed, and the papers' Caltech split1 and Omniglot
# chardata.mat files are not the files read here, so these splits are this project's own; never change a seed
# (every result on that dataset would silently move to other test images).
SPLIT_SEEDS = {"frey-faces": 0, "caltech-silhouettes": 0, "omniglot-28": 0}

FREY_FACES_FILE = "FreyFaces/freyfaces.pkl"
FREY_FACES_URL = "https://github.com/jmtomczak/vae_vampprior (datasets/Freyfaces/freyfaces.pkl)"
FREY_FACES_COUNTS = {"train": 1_565, "valid": 200, "test": 200}
FREY_FACES_SHAPE = (28, 20)
FREY_FACES_INTENSITY = (0.35, 0.85)  # plausible mean grey level (0..1); the canonical file has 0.606

CALTECH_FILE = "Caltech101Silhouettes/caltech101_silhouettes_28.mat"
CALTECH_URL = "https://people.cs.umass.edu/~marlin/data/caltech101_silhouettes_28.mat (Marlin's data page)"
CALTECH_COUNTS = {"train": 4_100, "valid": 2_264, "test": 2_307}
CALTECH_OBJECT_FRACTION = (0.25, 0.7)  # plausible fraction of object pixels; the canonical file has 0.456
CALTECH_BORDER_MAX = 0.2  # most of the image border is background: 1.3% object pixels in the canonical file

OMNIGLOT_FOLDER = "Omniglot"
OMNIGLOT_URL = (
    "images_background.zip / images_evaluation.zip of https://github.com/brendenlake/omniglot (python/), "
    "converted to .npz with `images` bool [characters, 20, 105, 105] (True = background, as in the PNGs)"
)
OMNIGLOT_CHARACTERS = {"images_background": 964, "images_evaluation": 659}  # 20 drawings of each character
OMNIGLOT_DRAWINGS, OMNIGLOT_SOURCE_SIZE = 20, 105
OMNIGLOT_COUNTS = {"train": 24_345, "test": 8_115}  # the training part includes the validation images
OMNIGLOT_N_VALID = 1_345  # default validation size: the last 1,345 of the training part, so 23,000 train
OMNIGLOT_BACKGROUND = (0.8, 0.98)  # plausible fraction of background pixels at 105x105; the files have 0.92
OMNIGLOT_RESIZE_VERSION = 1  # part of the cache key: bump it whenever the resized images change


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
    """Splits of shape [N, D]; ``train_probs`` holds grey levels for dynamic binarization. ``binary`` is True
    for values in {0, 1} (a Bernoulli decoder) and False for 8-bit grey levels in [0, 1], multiples of 1/255
    (a continuous decoder); :meth:`check_values` checks data against it."""

    name: str
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    train_probs: torch.Tensor | None = None
    image_shape: tuple[int, int] = (28, 28)
    binary: bool = True

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

    @property
    def kind(self) -> str:
        """``"binary"`` or ``"grey"`` (8-bit grey levels in [0, 1])."""
        return "binary" if self.binary else "grey"

    def check_values(self, x: torch.Tensor, what: str = "data") -> None:
        """:func:`check_binary` for binary datasets, :func:`check_grey` for grey ones."""
        (check_binary if self.binary else check_grey)(x, what)


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
        name: one of :data:`DATASETS`.
        root: data directory (see :func:`data_dir`).
        n_valid: for ``mnist``/``fashion-mnist``, how many of the last official training images
            form the validation split (default 10,000 as in the VampPrior paper; IWAE used 400); for
            ``omniglot-28``, how many of the last images of its training part (default 1,345).
            ``frey-faces`` and ``caltech-silhouettes`` have fixed, recorded splits: leave it unset there (or
            give their validation size); ``binarized-mnist`` and ``digits`` ignore it.
        binarize_seed: seed of the fixed Bernoulli draw of the evaluation splits.
    """
    if name == "binarized-mnist":
        return load_binarized_mnist(data_dir(root))
    if name in ("mnist", "fashion-mnist"):
        return load_dynamic_mnist(name, data_dir(root), 10_000 if n_valid is None else n_valid, binarize_seed)
    if name == "digits":
        return load_digits()
    if name == "frey-faces":
        return load_frey_faces(data_dir(root), n_valid)
    if name == "caltech-silhouettes":
        return load_caltech_silhouettes(data_dir(root), n_valid)
    if name == "omniglot-28":
        return load_omniglot28(data_dir(root), OMNIGLOT_N_VALID if n_valid is None else n_valid, binarize_seed)
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
        splits[split] = _cached_amat(path, split=split)
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


def check_amat_identity(path: Path, split: str) -> None:
    """Refuse ``path`` (read as the ``split`` split) when its sha256 is that of another split's canonical file."""
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    other = next((name for name, known in AMAT_SHA256.items() if known == digest and name != split), None)
    if other is not None:
        raise DataError(
            f"{path} is the canonical {other} split of binarized MNIST (sha256 {digest[:12]}...), not the {split} "
            f"split: the files are swapped or renamed; put each split under its own name "
            f"(binarized_mnist_{{train,valid,test}}.amat) or download them again"
        )


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


def _cached_amat(path: Path, dim: int = 784, split: str | None = None) -> torch.Tensor:
    """Parse an ``.amat`` file once and keep a binary copy in :func:`cache_dir`. The cache is optional: an
    unusable cache folder gives one warning and the file is parsed directly. With ``split``, a file that is
    another split's canonical file (:data:`AMAT_SHA256`) is a :class:`DataError` (checked when it is parsed)."""
    cached = _cache_path(path, dim)
    x = _read_cache(cached, dim)
    if x is not None:
        return x
    if split is not None:
        check_amat_identity(path, split)
    x = parse_amat(path, dim)
    _write_cache(cached, x.to(torch.uint8), "reading the .amat files without a cache, which is slower")
    return x


def _write_cache(cached: Path, x: torch.Tensor, consequence: str) -> None:
    """Save ``x`` to ``cached`` atomically; an unwritable cache folder gives a warning naming ``consequence``."""
    try:
        with atomic_path(cached) as tmp:
            torch.save({"data": x, "digest": content_digest(x)}, tmp)
    except (OSError, RuntimeError) as err:  # torch reports a full disk as a RuntimeError
        warnings.warn(
            f"cache folder {cached.parent} cannot be written ({type(err).__name__}: "
            f"{getattr(err, 'strerror', None) or str(err).splitlines()[0]}); {consequence}: set VAEBENCH_CACHE to "
            "a writable folder with free space",
            stacklevel=3,
        )


def _cache_path(path: Path, dim: int) -> Path:
    """The cached copy of ``path``, keyed by what fixes its content: the parser version, ``dim``, the name it is
    read under (a link named after one split never reads another split's copy) and the file (resolved path,
    size, modification time)."""
    identity = f"c{CACHE_FORMAT}:v{AMAT_PARSER_VERSION}:{dim}:{path.name}:{_file_identity(path)}"
    return cache_dir() / f"{path.stem}-{hashlib.sha1(identity.encode()).hexdigest()[:16]}.pt"


def _file_identity(path: Path) -> str:
    """What identifies a source file's content for the cache: its resolved path, size and modification time."""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _read_cache(cached: Path, dim: int, max_value: int = 1, count: int | None = None) -> torch.Tensor | None:
    """The cached copy as float32, or None when it is missing, unreadable, damaged (its checksum does not match),
    or not a uint8 [N, ``dim``] tensor with values 0..``max_value`` (and ``count`` rows when given); then the
    source is read again and the copy replaced."""
    try:
        if not cached.is_file():
            return None
        stored = torch.load(cached, weights_only=True)
    except Exception:  # any damage (torch.load raises IndexError, EOFError, ...) means parse again
        return None
    x = stored.get("data") if isinstance(stored, dict) else None
    if not isinstance(x, torch.Tensor) or stored.get("digest") != content_digest(x):  # a flipped bit: parse again
        return None
    if x.dtype != torch.uint8 or x.ndim != 2 or x.shape[1] != dim:
        return None
    if x.numel() == 0 or bool((x > max_value).any()) or (count is not None and x.shape[0] != count):
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
    if images.size == 0:
        raise _IdxProblem(path.name, "holds no images", f"{IDX_SPECS[name].title} images")
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


def split_permutation(n: int, seed: int) -> np.ndarray:
    """The fixed order in which a dataset without an official split is cut into train / valid / test: a
    permutation of ``n`` indices from numpy's legacy ``RandomState(seed)``, whose stream numpy keeps the same in
    every version (NEP 19), so the recorded splits never move."""
    return np.random.RandomState(seed).permutation(n)


def _split(x: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """``x`` cut into consecutive parts of ``counts`` rows."""
    return list(torch.split(x, counts))


def _fixed_split_size(name: str, counts: dict[str, int], n_valid: int | None) -> None:
    if n_valid is not None and n_valid != counts["valid"]:
        sizes = " / ".join(f"{n:,}" for n in counts.values())
        raise DataError(
            f"n_valid={n_valid}: {name} has a fixed, recorded split of {sizes} (train / valid / test); "
            "leave n_valid unset for it"
        )


def _require_file(path: Path, name: str, layout: str, source: str) -> None:
    """A :class:`DataError` naming the missing file, the layout and where to get it."""
    if path.is_file():
        return
    raise DataError(
        f"{name}: missing {path}. Put {layout} under the data directory {path.parents[1]} (or set VAEBENCH_DATA "
        f"to a directory holding it); get it from {source}"
    )


# --- frey-faces ------------------------------------------------------------------------------------------


def load_frey_faces(root: Path, n_valid: int | None = None) -> Dataset:
    """Frey Faces: 1,965 faces of 28x20 pixels, 8-bit grey levels kept as float values ``uint8 / 255`` in
    [0, 1] (``binary=False``: model them with a continuous decoder). Split 1,565 / 200 / 200 as in the VampPrior
    paper, but by the fixed permutation :func:`split_permutation` with seed ``SPLIT_SEEDS["frey-faces"]`` (0):
    the official code's shuffle was unseeded, so the paper's own split cannot be recovered."""
    counts = FREY_FACES_COUNTS
    _fixed_split_size("frey-faces", counts, n_valid)
    path = root / FREY_FACES_FILE
    _require_file(path, "frey-faces", FREY_FACES_FILE, FREY_FACES_URL)
    faces = read_frey_faces(path)
    x = torch.from_numpy(faces).float() / 255.0
    x = x[torch.from_numpy(split_permutation(len(x), SPLIT_SEEDS["frey-faces"]))]
    train, valid, test = _split(x, list(counts.values()))
    return Dataset("frey-faces", train, valid, test, image_shape=FREY_FACES_SHAPE, binary=False)


def _numpy_reconstruct():
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays (and the lists and tuples holding them) and nothing else: any
    other class or function a pickle names is refused, so reading a pickle never runs code from it."""

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise _UnsafePickle(f"{module}.{name}")

    def persistent_load(self, pid):
        raise _UnsafePickle(f"persistent id {pid!r}")


class _UnsafePickle(Exception):
    """A pickle names something that is not part of a numpy array."""


def read_frey_faces(path: Path) -> np.ndarray:
    """The uint8 faces [1965, 560] of the VampPrior code's ``freyfaces.pkl`` (a list holding one array, row-major
    28x20 faces), read safely (:class:`_NumpyOnlyUnpickler`) and checked for shape, count and intensity."""
    fix = f"the file is damaged or not the canonical one: get it again from {FREY_FACES_URL}"
    try:
        with open(path, "rb") as f:
            data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except _UnsafePickle as err:
        raise DataError(
            f"{path} is refused: the pickle asks for {err}, and only numpy arrays are read from it (a pickle "
            f"naming anything else could run code); {fix}"
        ) from None
    except (FileNotFoundError, PermissionError) as err:
        raise DataError(f"{path} cannot be read ({err.strerror or err}): check its permissions") from None
    except Exception as err:  # truncated or garbled: EOFError, UnpicklingError, OSError, ValueError, ...
        raise DataError(
            f"{path} cannot be read as a pickle ({type(err).__name__}: {err}); it is truncated or damaged: {fix}"
        ) from None
    n, dim = sum(FREY_FACES_COUNTS.values()), FREY_FACES_SHAPE[0] * FREY_FACES_SHAPE[1]
    expected = f"a list holding one uint8 array [{n}, {dim}]"
    if not isinstance(data, (list, tuple)) or len(data) != 1 or not isinstance(data[0], np.ndarray):
        found = f"a {type(data).__name__}" + (f" of {len(data)} items" if isinstance(data, (list, tuple)) else "")
        raise DataError(f"{path} holds {found}, expected {expected}; {fix}")
    faces = data[0]
    if faces.dtype != np.uint8 or faces.ndim != 2 or faces.shape[1] != dim:
        raise DataError(
            f"{path} holds a {faces.dtype} array of shape {list(faces.shape)}, expected {expected} "
            f"({FREY_FACES_SHAPE[0]}x{FREY_FACES_SHAPE[1]} faces, 8-bit grey levels); {fix}"
        )
    if faces.shape[0] != n:
        raise DataError(f"{path} holds {faces.shape[0]:,} faces, expected {n:,}; {fix}")
    mean, (low, high) = float(faces.mean(dtype=np.float64)) / 255.0, FREY_FACES_INTENSITY
    if not low <= mean <= high:
        raise DataError(
            f"{path}: mean grey level {mean:.3f}, expected {low:.2f} to {high:.2f} (the canonical faces have "
            f"0.606); blank, inverted or not Frey Faces: {fix}"
        )
    if not (faces != faces[0]).any():
        raise DataError(f"{path}: all {n:,} faces are identical; {fix}")
    return faces


# --- caltech-silhouettes ---------------------------------------------------------------------------------


def load_caltech_silhouettes(root: Path, n_valid: int | None = None) -> Dataset:
    """Caltech 101 Silhouettes at 28x28 (Marlin et al. 2010), all 8,671 images: binary, the object 1 on a 0
    background as in MNIST, upright (:func:`read_caltech_silhouettes`). Split 4,100 / 2,264 / 2,307, the sizes of
    the papers' ``split1`` file, which is not read here: the split is this project's own, the fixed permutation
    :func:`split_permutation` with seed ``SPLIT_SEEDS["caltech-silhouettes"]`` (0)."""
    counts = CALTECH_COUNTS
    _fixed_split_size("caltech-silhouettes", counts, n_valid)
    path = root / CALTECH_FILE
    _require_file(path, "caltech-silhouettes", CALTECH_FILE, CALTECH_URL)
    x = read_caltech_silhouettes(path)
    x = x[torch.from_numpy(split_permutation(len(x), SPLIT_SEEDS["caltech-silhouettes"]))]
    train, valid, test = _split(x, list(counts.values()))
    return Dataset("caltech-silhouettes", train, valid, test)


def read_caltech_silhouettes(path: Path) -> torch.Tensor:
    """The images [8671, 784] (float 0/1, file order) of ``caltech101_silhouettes_28.mat``, row-major and with
    the object 1. The file's ``X`` stores each image column by column (MATLAB order; the VampPrior code reshapes
    with ``order="F"``) with the object 0 on a background of 1 (the VampPrior code uses ``1 - x``): both are
    undone here, which was checked by looking at the images (upright airplanes, faces, pyramids, umbrellas).
    Checked: ``X`` present, its shape, values 0/1, a plausible object fraction and a background border."""
    import scipy.io

    n, side = sum(CALTECH_COUNTS.values()), IMAGE_SIZE[0]
    fix = f"the file is damaged or not the canonical one: get it again from {CALTECH_URL}"
    try:
        mat = scipy.io.loadmat(path)
    except (FileNotFoundError, PermissionError) as err:
        raise DataError(f"{path} cannot be read ({err.strerror or err}): check its permissions") from None
    except Exception as err:  # truncated or not MATLAB v5: OSError, IndexError, ValueError, MatReadError, ...
        raise DataError(
            f"{path} cannot be read as a MATLAB v5 .mat file ({type(err).__name__}: {err}); it is truncated or "
            f"damaged: {fix}"
        ) from None
    if "X" not in mat:
        names = [k for k in mat if not k.startswith("__")]
        raise DataError(
            f"{path} holds no variable X (it holds {', '.join(names) or 'no variables'}), expected X uint8 "
            f"[{n}, {side * side}] with the images; {fix}"
        )
    raw = mat["X"]
    if not isinstance(raw, np.ndarray) or raw.ndim != 2 or raw.shape[1] != side * side or raw.dtype.kind not in "uifb":
        found = f"{raw.dtype} array of shape {list(raw.shape)}" if isinstance(raw, np.ndarray) else type(raw).__name__
        raise DataError(f"{path}: X is a {found}, expected uint8 [{n}, {side * side}] ({side}x{side} images); {fix}")
    if raw.shape[0] != n:
        raise DataError(f"{path}: X holds {raw.shape[0]:,} images, expected {n:,}; {fix}")
    if not np.isin(raw, (0, 1)).all():
        bad = raw[~np.isin(raw, (0, 1))].flat[0]
        raise DataError(f"{path}: X holds values other than 0 and 1 (e.g. {bad}), expected binary silhouettes; {fix}")
    images = 1 - raw.astype(np.uint8).reshape(n, side, side).transpose(0, 2, 1)  # column-major, object 0
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1)
    if border.mean() > CALTECH_BORDER_MAX:
        raise DataError(
            f"{path}: {border.mean():.0%} of the image border would be object pixels, expected at most "
            f"{CALTECH_BORDER_MAX:.0%} (the canonical X has the object 0 on a background of 1); the file looks "
            f"inverted: {fix}"
        )
    fraction, (low, high) = float(images.mean(dtype=np.float64)), CALTECH_OBJECT_FRACTION
    if not low <= fraction <= high:
        raise DataError(
            f"{path}: {fraction:.1%} of the pixels are object pixels, expected {low:.0%} to {high:.0%} (the "
            f"canonical file has 45.6%); {fix}"
        )
    return torch.from_numpy(np.ascontiguousarray(images).reshape(n, side * side)).float()


# --- omniglot-28 -----------------------------------------------------------------------------------------


def load_omniglot28(root: Path, n_valid: int = OMNIGLOT_N_VALID, binarize_seed: int = 123) -> Dataset:
    """Omniglot-28 (resized): all 32,460 drawings of ``images_background.npz`` and ``images_evaluation.npz``
    (Lake et al.'s 105x105 strokes), strokes made 1 and resized to 28x28 by area averaging
    (:func:`omniglot_grey_levels`), then binarized dynamically as ``mnist``: ``train_probs`` keeps the grey
    levels of the training images for a fresh Bernoulli draw every epoch, and ``train``, ``valid`` and ``test``
    are one fixed draw with ``torch.Generator().manual_seed(binarize_seed)`` (training part first, then test).

    Split: the fixed permutation :func:`split_permutation` with seed ``SPLIT_SEEDS["omniglot-28"]`` (0) puts
    24,345 images in the training part and 8,115 in the test set; validation is the last ``n_valid`` (default
    1,345, leaving 23,000 to train) of the training part. The IWAE and VampPrior papers' 28x28 set
    (``chardata.mat``, 24,345 / 8,070) is not made from these files and cannot be reproduced from them: results
    are comparable in kind, not digit for digit."""
    n_train = OMNIGLOT_COUNTS["train"]
    if not 0 < n_valid < n_train:
        raise DataError(f"n_valid={n_valid}: choose a validation size between 1 and {n_train - 1:,}")
    probs = omniglot_grey_levels(root / OMNIGLOT_FOLDER)
    probs = probs[torch.from_numpy(split_permutation(len(probs), SPLIT_SEEDS["omniglot-28"]))]
    train_probs, test_probs = _split(probs, [n_train, len(probs) - n_train])
    gen = torch.Generator().manual_seed(binarize_seed)
    fixed_train = torch.bernoulli(train_probs, generator=gen)
    fixed_test = torch.bernoulli(test_probs, generator=gen)
    cut = n_train - n_valid
    return Dataset("omniglot-28", fixed_train[:cut], fixed_train[cut:], fixed_test, train_probs=train_probs[:cut])


def _area_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in]: 1 where source pixel ``j`` lies in the window of resized pixel ``i``. The windows are those of
    area resizing (``adaptive_avg_pool2d``, ``interpolate(mode="area")``): from ``floor(i * n_in / n_out)`` to
    ``ceil((i + 1) * n_in / n_out)``, 4 or 5 pixels long from 105 to 28 (neighbouring windows may share one)."""
    i, j = torch.arange(n_out)[:, None], torch.arange(n_in)[None, :]
    return ((j >= (i * n_in) // n_out) & (j < -((-(i + 1) * n_in) // n_out))).float()


def _area_window_sizes(side: int = OMNIGLOT_SOURCE_SIZE) -> torch.Tensor:
    """The number of source pixels behind each of the 28x28 resized pixels, flattened to [784]."""
    rows, cols = _area_matrix(side, IMAGE_SIZE[0]).sum(1), _area_matrix(side, IMAGE_SIZE[1]).sum(1)
    return (rows[:, None] * cols[None, :]).reshape(-1)


def omniglot_grey_levels(folder: Path) -> torch.Tensor:
    """The 32,460 Omniglot drawings at 28x28 as float grey levels [N, 784] in [0, 1], in file order
    (``images_background`` then ``images_evaluation``, character by character, 20 drawings each): the fraction
    of stroke pixels in each pixel's window of the 105x105 image, as ``torch.nn.functional.interpolate`` with
    ``mode="area"`` (``adaptive_avg_pool2d``) gives it. The stroke counts are cached in :func:`cache_dir`, keyed by
    :data:`OMNIGLOT_RESIZE_VERSION` and both files' path, size and modification time."""
    paths = [folder / f"{stem}.npz" for stem in OMNIGLOT_CHARACTERS]
    for path in paths:
        layout = f"{OMNIGLOT_FOLDER}/{{{','.join(OMNIGLOT_CHARACTERS)}}}.npz"
        _require_file(path, "omniglot-28", layout, OMNIGLOT_URL)
    n = OMNIGLOT_DRAWINGS * sum(OMNIGLOT_CHARACTERS.values())
    areas = _area_window_sizes()
    identity = f"c{CACHE_FORMAT}:v{OMNIGLOT_RESIZE_VERSION}:{IMAGE_SIZE}:" + ":".join(_file_identity(p) for p in paths)
    cached = cache_dir() / f"omniglot28-{hashlib.sha1(identity.encode()).hexdigest()[:16]}.pt"
    counts = _read_cache(cached, areas.numel(), max_value=int(areas.max()), count=n)
    if counts is None:
        counts = torch.cat([_stroke_counts(read_omniglot_npz(p, OMNIGLOT_CHARACTERS[p.stem])) for p in paths])
        _write_cache(cached, counts, "resizing the Omniglot images again at every load, which is slower")
        counts = counts.float()
    return counts / areas


def read_omniglot_npz(path: Path, characters: int) -> np.ndarray:
    """The strokes (True on strokes) [characters * 20, 105, 105] of an Omniglot ``.npz`` whose ``images`` are
    bool [characters, 20, 105, 105] with True on the background; checked for the key, dtype, shape, count and
    a plausible fraction of background pixels (an inverted file is named as such). Never unpickles."""
    side, drawings = OMNIGLOT_SOURCE_SIZE, OMNIGLOT_DRAWINGS
    expected = f"images bool [{characters}, {drawings}, {side}, {side}] (True = background)"
    fix = f"the file is damaged or not the canonical one: make it again from {OMNIGLOT_URL}"
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "images" not in npz.files:
                raise DataError(
                    f"{path} holds no array `images` (it holds {', '.join(npz.files) or 'nothing'}), expected "
                    f"{expected}; {fix}"
                )
            images = npz["images"]
    except DataError:
        raise
    except (FileNotFoundError, PermissionError) as err:
        raise DataError(f"{path} cannot be read ({err.strerror or err}): check its permissions") from None
    except Exception as err:  # truncated or garbled zip: BadZipFile, ValueError, EOFError, zlib.error, ...
        raise DataError(
            f"{path} cannot be read as a numpy .npz file ({type(err).__name__}: {err}); it is truncated or "
            f"damaged: {fix}"
        ) from None
    if images.dtype != np.bool_ or images.ndim != 4 or images.shape[1:] != (drawings, side, side):
        raise DataError(f"{path}: images is {images.dtype} {list(images.shape)}, expected {expected}; {fix}")
    if images.shape[0] != characters:
        raise DataError(
            f"{path}: images holds {images.shape[0]:,} characters ({images.shape[0] * drawings:,} drawings), "
            f"expected {characters:,} ({characters * drawings:,}); {fix}"
        )
    background, (low, high) = float(images.mean(dtype=np.float64)), OMNIGLOT_BACKGROUND
    if not low <= background <= high:
        looks = "inverted (True on the strokes)" if background < 0.5 else "blank or nearly so"
        raise DataError(
            f"{path}: {background:.1%} of the pixels are background (True), expected {low:.0%} to {high:.0%} "
            f"(the canonical files have about 92%); the images look {looks}: {fix}"
        )
    return ~images.reshape(-1, side, side)


def _stroke_counts(strokes: np.ndarray, chunk: int = 2048) -> torch.Tensor:
    """uint8 [N, 784]: how many stroke pixels lie in each 28x28 pixel's area window (:func:`_area_matrix`), summed
    exactly as ``rows @ image @ cols.T``; divided by the window sizes they are ``interpolate(mode="area")``."""
    rows, cols = _area_matrix(strokes.shape[-2], IMAGE_SIZE[0]), _area_matrix(strokes.shape[-1], IMAGE_SIZE[1])
    out = [torch.zeros(0, IMAGE_SIZE[0] * IMAGE_SIZE[1], dtype=torch.uint8)]
    for start in range(0, len(strokes), chunk):
        x = torch.from_numpy(strokes[start : start + chunk].view(np.uint8).astype(np.float32))
        out.append(torch.round(rows @ x @ cols.T).to(torch.uint8).reshape(len(x), -1))
    return torch.cat(out)


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


def check_grey(x: torch.Tensor, what: str = "data") -> None:
    """Raise :class:`DataError` unless ``x`` is non-empty 8-bit grey data: every value in [0, 1] and a multiple
    of 1/255 (``uint8 / 255``), as a discretized (e.g. logistic) decoder over 256 levels expects."""
    if x.numel() == 0:
        raise DataError(f"{what} is empty: check the split and the test-subset size")
    levels = x.double() * 255.0
    bad = ~((x >= 0) & (x <= 1)) | ((levels - levels.round()).abs() > 1e-3)
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise DataError(
            f"{what} holds a value that is not an 8-bit grey level in [0, 1] (first at index {index}: "
            f"{float(x[index])}); grey data must be uint8 / 255"
        )
