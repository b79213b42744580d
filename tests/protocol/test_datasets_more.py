"""The papers' other datasets (frey-faces, caltech-silhouettes, omniglot-28): loaders on small files written here
in each dataset's real format, their errors on damaged files, and checks on the real files when ``VAEBENCH_DATA``
points at them."""

import hashlib
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from vaebench.protocol import datasets
from vaebench.protocol.datasets import (
    DATASETS,
    DataError,
    Dataset,
    check_binary,
    check_grey,
    load_dataset,
    read_caltech_silhouettes,
    split_permutation,
)

SHARED = Path(os.environ["VAEBENCH_DATA"]) if os.environ.get("VAEBENCH_DATA") else None


def shared_has(*names: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        SHARED is None or not all((SHARED / n).is_file() for n in names), reason="no VAEBENCH_DATA with the real files"
    )


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEBENCH_CACHE", str(tmp_path / "cache"))


def sha256(x: torch.Tensor) -> str:
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()


def test_new_names_are_known_and_the_split_order_is_pinned():
    assert {"frey-faces", "caltech-silhouettes", "omniglot-28", "fashion-mnist"} <= set(DATASETS)
    # numpy's legacy RandomState stream never changes (NEP 19): the recorded splits never move
    assert split_permutation(10, 0).tolist() == [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]
    assert datasets.SPLIT_SEEDS == {"frey-faces": 0, "caltech-silhouettes": 0, "omniglot-28": 0}


def test_check_grey_and_dataset_kind():
    check_grey(torch.arange(256, dtype=torch.float32) / 255)
    for bad in (0.5, 1.2, -1 / 255):
        with pytest.raises(DataError, match="not an 8-bit grey level in"):
            check_grey(torch.tensor([[0.0, bad]]))
    with pytest.raises(DataError, match="empty"):
        check_grey(torch.zeros(0, 3))
    grey = Dataset("g", torch.full((2, 3), 3 / 255), torch.zeros(1, 3), torch.ones(1, 3), binary=False)
    assert (grey.kind, Dataset("b", torch.ones(1, 3), torch.ones(1, 3), torch.ones(1, 3)).kind) == ("grey", "binary")
    grey.check_values(grey.train)
    with pytest.raises(DataError, match="values other than 0 and 1"):
        check_binary(grey.train)
    with pytest.raises(DataError, match="values other than 0 and 1"):
        Dataset("b", torch.ones(1, 3), torch.ones(1, 3), torch.ones(1, 3)).check_values(grey.train)


# --- frey-faces ------------------------------------------------------------------------------------------------


@pytest.fixture
def small_frey(monkeypatch):
    monkeypatch.setattr(datasets, "FREY_FACES_COUNTS", {"train": 6, "valid": 2, "test": 2})


def frey_faces(n: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(60, 250, (n, 560)).astype(np.uint8)


def py2_pickle(faces: np.ndarray) -> bytes:
    """``[faces]`` pickled as Python 2's numpy wrote the canonical file (protocol 0, the pixels as a ``str``);
    byte for byte the canonical file when given its faces (checked in :func:`test_real_frey_faces`)."""
    head = (
        b"(lp0\ncnumpy.core.multiarray\n_reconstruct\np1\n(cnumpy\nndarray\np2\n(I0\ntp3\nS'b'\np4\ntp5\nRp6\n"
        b"(I1\n(I%d\nI%d\ntp7\ncnumpy\ndtype\np8\n(S'u1'\np9\nI0\nI1\ntp10\nRp11\n(I3\nS'|'\np12\nNNNI-1\nI-1\n"
        b"I0\ntp13\nbI00\nS" % faces.shape
    )
    return head + repr(faces.tobytes())[1:].encode() + b"\np14\ntp15\nba."


def write_pickle(root: Path, obj, protocol: int | None = 4) -> Path:
    """``obj`` pickled with ``protocol``, or as Python 2 wrote the canonical file when ``protocol`` is None."""
    path = root / "FreyFaces" / "freyfaces.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(py2_pickle(obj[0]) if protocol is None else pickle.dumps(obj, protocol=protocol))
    return path


def test_frey_faces_grey_split_fixed_and_recorded(tmp_path, small_frey):
    faces = frey_faces()
    for protocol in (None, 3, 4):  # the canonical file is Python 2's protocol 0; Python 3 rewrites are read too
        write_pickle(tmp_path, [faces], protocol)
        a, b = load_dataset("frey-faces", tmp_path), load_dataset("frey-faces", tmp_path, n_valid=2)
        assert (a.train.shape, a.valid.shape, a.test.shape) == ((6, 560), (2, 560), (2, 560))
        assert (a.binary, a.kind, a.image_shape, a.train_probs) == (False, "grey", (28, 20), None)
        for split in ("train", "valid", "test"):
            check_grey(getattr(a, split))
            assert torch.equal(getattr(a, split), getattr(b, split))
        want = torch.from_numpy(faces[split_permutation(10, 0)]).float() / 255
        assert torch.equal(torch.cat([a.train, a.valid, a.test]), want)
        assert torch.equal(a.training_epoch_data(torch.Generator()), a.train)


def test_frey_pickle_never_runs_code_from_the_file(tmp_path, small_frey):
    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    for payload in (Evil(), [frey_faces(), Evil()], [np.array([Evil()], dtype=object)]):
        write_pickle(tmp_path, payload)
        with pytest.raises(DataError, match=r"freyfaces.pkl is refused: the pickle asks for .*mkdir, and only numpy"):
            load_dataset("frey-faces", tmp_path)
        assert not marker.exists()


def test_damaged_frey_pickles_are_named(tmp_path, small_frey):
    path = write_pickle(tmp_path, [frey_faces()])
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match=r"freyfaces.pkl cannot be read as a pickle \(UnpicklingError.*truncated"):
        load_dataset("frey-faces", tmp_path)
    path.write_bytes(b"")
    with pytest.raises(DataError, match="cannot be read as a pickle"):
        load_dataset("frey-faces", tmp_path)
    cases = [
        (frey_faces(), r"holds a ndarray, expected a list holding one uint8 array \[10, 560\]"),
        ([frey_faces(), frey_faces()], "holds a list of 2 items, expected a list holding one"),
        ([frey_faces().astype(np.float64)], r"holds a float64 array of shape \[10, 560\], expected"),
        ([frey_faces().reshape(-1, 28, 20)], r"holds a uint8 array of shape \[10, 28, 20\]"),
        ([frey_faces(12)], "holds 12 faces, expected 10"),
        ([np.zeros((10, 560), np.uint8)], r"mean grey level 0.000, expected 0.35 to 0.85"),
        ([np.repeat(frey_faces(1), 10, axis=0)], "all 10 faces are identical"),
    ]
    for obj, message in cases:
        write_pickle(tmp_path, obj)
        with pytest.raises(DataError, match=message):
            load_dataset("frey-faces", tmp_path)


def test_missing_frey_file_and_fixed_split_sizes(tmp_path):
    with pytest.raises(DataError, match=r"frey-faces: missing .*FreyFaces/freyfaces.pkl.*vae_vampprior"):
        load_dataset("frey-faces", tmp_path)
    with pytest.raises(DataError, match=r"n_valid=100: frey-faces has a fixed, recorded split of 1,565 / 200 / 200"):
        load_dataset("frey-faces", tmp_path, n_valid=100)
    with pytest.raises(DataError, match="n_valid=5: caltech-silhouettes has a fixed, recorded split of 4,100"):
        load_dataset("caltech-silhouettes", tmp_path, n_valid=5)


# --- caltech-silhouettes ---------------------------------------------------------------------------------------


@pytest.fixture
def small_caltech(monkeypatch):
    monkeypatch.setattr(datasets, "CALTECH_COUNTS", {"train": 4, "valid": 3, "test": 3})


def silhouettes(n: int = 10) -> np.ndarray:
    """Upright, asymmetric objects (1) on a 0 background: a tall block at the left, a foot at the bottom right."""
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        images[i, 4 + i % 3 : 24, 3:12] = 1
        images[i, 18:24, 12 : 20 + i % 5] = 1
    return images


def write_caltech(root: Path, images: np.ndarray | None = None, **variables) -> Path:
    """The .mat layout of the canonical file: X [n, 784] column-major with the object 0, Y, classnames."""
    path = root / "Caltech101Silhouettes" / "caltech101_silhouettes_28.mat"
    path.parent.mkdir(parents=True, exist_ok=True)
    if images is not None:
        variables.setdefault("X", (1 - images).transpose(0, 2, 1).reshape(len(images), 784).astype(np.uint8))
    variables.setdefault("Y", np.ones((1, 10), np.uint8))
    scipy.io.savemat(path, variables)
    return path


def test_caltech_order_polarity_and_fixed_split(tmp_path, small_caltech):
    images = silhouettes()
    path = write_caltech(tmp_path, images)
    want = torch.from_numpy(images.reshape(10, 784)).float()
    assert torch.equal(read_caltech_silhouettes(path), want)  # upright (row-major) with the object 1
    a, b = load_dataset("caltech-silhouettes", tmp_path), load_dataset("caltech-silhouettes", tmp_path)
    assert (a.train.shape, a.valid.shape, a.test.shape) == ((4, 784), (3, 784), (3, 784))
    assert (a.binary, a.image_shape, a.train_probs) == (True, (28, 28), None)
    assert torch.equal(torch.cat([a.train, a.valid, a.test]), want[split_permutation(10, 0)])
    for split in ("train", "valid", "test"):
        check_binary(getattr(a, split))
        assert torch.equal(getattr(a, split), getattr(b, split))


def test_damaged_caltech_files_are_named(tmp_path, small_caltech):
    images = silhouettes()
    path = write_caltech(tmp_path, images)
    whole = path.read_bytes()
    for damaged in (whole[: len(whole) // 2], whole[:100], b"not a mat file at all" * 10):
        path.write_bytes(damaged)
        with pytest.raises(DataError, match=r"caltech101_silhouettes_28.mat cannot be read as a MATLAB v5 .mat file"):
            load_dataset("caltech-silhouettes", tmp_path)
    raw = (1 - images).transpose(0, 2, 1).reshape(10, 784)
    cases = [
        ({"Z": raw}, r"holds no variable X \(it holds Z, Y\), expected X uint8 \[10, 784\]"),
        ({"X": raw[:, :700]}, r"X is a uint8 array of shape \[10, 700\], expected uint8 \[10, 784\]"),
        ({"X": raw.reshape(10, 28, 28)}, r"X is a uint8 array of shape \[10, 28, 28\]"),
        ({"X": np.concatenate([raw, raw[:2]])}, "X holds 12 images, expected 10"),
        ({"X": raw * 2}, r"X holds values other than 0 and 1 \(e.g. 2\)"),
        ({"X": 1 - raw}, "of the image border would be object pixels, expected at most 20%.*looks inverted"),
        ({"X": np.ones_like(raw)}, r"0.0% of the pixels are object pixels, expected 25% to 70%"),
    ]
    for variables, message in cases:
        write_caltech(tmp_path, **variables)
        with pytest.raises(DataError, match=message):
            load_dataset("caltech-silhouettes", tmp_path)
    write_caltech(tmp_path, X=raw.astype(np.float64))  # a double-precision X of 0/1 reads the same
    assert torch.equal(read_caltech_silhouettes(path), torch.from_numpy(images.reshape(10, 784)).float())


def test_missing_caltech_file_names_layout_and_source(tmp_path):
    with pytest.raises(
        DataError, match=r"missing .*Caltech101Silhouettes/caltech101_silhouettes_28.mat.*marlin.*silhouettes_28.mat"
    ):
        load_dataset("caltech-silhouettes", tmp_path)


# --- omniglot-28 -----------------------------------------------------------------------------------------------


@pytest.fixture
def small_omniglot(monkeypatch):
    monkeypatch.setattr(datasets, "OMNIGLOT_CHARACTERS", {"images_background": 2, "images_evaluation": 1})
    monkeypatch.setattr(datasets, "OMNIGLOT_COUNTS", {"train": 45, "test": 15})


def omniglot_images(characters: int, seed: int) -> np.ndarray:
    """bool [characters, 20, 105, 105], True on the background, with a few random strokes (lines) each."""
    rng = np.random.default_rng(seed)
    images = np.ones((characters, 20, 105, 105), bool)
    for c in range(characters):
        for d in range(20):
            for _ in range(3):
                r, s = rng.integers(5, 95, 2)
                images[c, d, r : r + 3, s : s + rng.integers(10, 60)] = False
                images[c, d, r : r + rng.integers(10, 60), s : s + 3] = False
    return images


def write_npz(root: Path, stem: str, **arrays) -> Path:
    path = root / "Omniglot" / f"{stem}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # np.savez would add ".npz" to a name without it; keep the exact name
        np.savez_compressed(f, **arrays)
    return path


def write_omniglot(root: Path) -> np.ndarray:
    """The two .npz files (2 and 1 characters); returns the 60 drawings' strokes (True on strokes) in file order."""
    parts = []
    for seed, (stem, characters) in enumerate((("images_background", 2), ("images_evaluation", 1))):
        images = omniglot_images(characters, seed)
        write_npz(root, stem, images=images, labels=np.zeros((characters, 20), np.int64))
        parts.append(~images.reshape(-1, 105, 105))
    return np.concatenate(parts)


def test_omniglot_resized_by_area_split_and_binarized_dynamically(tmp_path, small_omniglot):
    strokes = write_omniglot(tmp_path)
    a = load_dataset("omniglot-28", tmp_path, n_valid=5, binarize_seed=3)
    assert (a.train.shape, a.valid.shape, a.test.shape, a.train_probs.shape) == (
        (40, 784),
        (5, 784),
        (15, 784),
        (40, 784),
    )
    assert (a.binary, a.image_shape) == (True, (28, 28))
    area = torch.nn.functional.interpolate(torch.from_numpy(strokes).float()[:, None], size=(28, 28), mode="area")
    want = area.reshape(60, 784)[split_permutation(60, 0)]
    torch.testing.assert_close(a.train_probs, want[:40], rtol=0, atol=1e-6)  # strokes 1, area-averaged
    assert 0.02 < float(a.train_probs.mean()) < 0.3
    for split in (a.train, a.valid, a.test):
        check_binary(split)
    b = load_dataset("omniglot-28", tmp_path, n_valid=5, binarize_seed=3)  # from the cache this time
    assert len(list((tmp_path / "cache").glob("omniglot28-*.pt"))) == 1
    for split in ("train", "valid", "test", "train_probs"):
        assert torch.equal(getattr(a, split), getattr(b, split))
    c = load_dataset("omniglot-28", tmp_path, n_valid=10, binarize_seed=4)
    assert torch.equal(c.train_probs, a.train_probs[:35]) and not torch.equal(c.test, a.test)
    gen = torch.Generator().manual_seed(0)
    epoch1, epoch2 = a.training_epoch_data(gen), a.training_epoch_data(gen)
    assert not torch.equal(epoch1, epoch2)
    check_binary(epoch1)
    for n_valid in (0, 45):
        with pytest.raises(DataError, match=f"n_valid={n_valid}: choose a validation size between 1 and 44"):
            load_dataset("omniglot-28", tmp_path, n_valid=n_valid)


def test_default_omniglot_validation_size():
    assert datasets.OMNIGLOT_COUNTS["train"] - datasets.OMNIGLOT_N_VALID == 23_000
    assert sum(datasets.OMNIGLOT_COUNTS.values()) == 20 * sum(datasets.OMNIGLOT_CHARACTERS.values()) == 32_460


def test_damaged_omniglot_files_are_named(tmp_path, small_omniglot):
    write_omniglot(tmp_path)
    good = omniglot_images(2, 0)
    path = tmp_path / "Omniglot" / "images_background.npz"
    whole = path.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"", b"garbage" * 100):
        path.write_bytes(damaged)
        with pytest.raises(DataError, match=r"images_background.npz cannot be read as a numpy .npz file"):
            load_dataset("omniglot-28", tmp_path, n_valid=5)
    cases = [
        ({"labels": np.zeros((2, 20))}, r"holds no array `images` \(it holds labels\), expected images bool"),
        ({"images": good[:, :, :28, :28]}, r"images is bool \[2, 20, 28, 28\], expected images bool \[2, 20, 105"),
        ({"images": good.astype(np.uint8)}, r"images is uint8 \[2, 20, 105, 105\], expected"),
        ({"images": good.reshape(40, 105, 105)}, r"images is bool \[40, 105, 105\]"),
        ({"images": np.concatenate([good, good[:1]])}, r"holds 3 characters \(60 drawings\), expected 2 \(40\)"),
        ({"images": ~good}, "of the pixels are background .*the images look inverted"),
        ({"images": np.ones_like(good)}, r"100.0% of the pixels are background .* look blank"),
        ({"images": np.array([[None]], dtype=object)}, "cannot be read as a numpy .npz file.*allow_pickle"),
    ]
    for arrays, message in cases:
        write_npz(tmp_path, "images_background", **arrays)
        with pytest.raises(DataError, match=message):
            load_dataset("omniglot-28", tmp_path, n_valid=5)


def test_missing_omniglot_file_names_layout_and_source(tmp_path, small_omniglot):
    write_omniglot(tmp_path)
    (tmp_path / "Omniglot" / "images_evaluation.npz").unlink()
    with pytest.raises(
        DataError,
        match=r"omniglot-28: missing .*images_evaluation.npz\. Put Omniglot/\{images_background,images_evaluation\}"
        r"\.npz under the data directory .*brendenlake/omniglot",
    ):
        load_dataset("omniglot-28", tmp_path, n_valid=5)


def test_omniglot_cache_is_optional_keyed_and_checked(tmp_path, small_omniglot, monkeypatch):
    write_omniglot(tmp_path)
    want = load_dataset("omniglot-28", tmp_path, n_valid=5).train_probs
    [cached] = (tmp_path / "cache").glob("omniglot28-*.pt")
    for poison in (
        torch.full((60, 784), 26, dtype=torch.uint8),  # more stroke pixels than a window holds
        torch.zeros(59, 784, dtype=torch.uint8),
        torch.zeros(60, 784),
        b"truncated",
    ):
        if isinstance(poison, bytes):
            cached.write_bytes(poison)
        else:
            torch.save(poison, cached)
        assert torch.equal(load_dataset("omniglot-28", tmp_path, n_valid=5).train_probs, want)
    monkeypatch.setattr(datasets, "OMNIGLOT_RESIZE_VERSION", datasets.OMNIGLOT_RESIZE_VERSION + 1)
    load_dataset("omniglot-28", tmp_path, n_valid=5)
    assert len(list((tmp_path / "cache").glob("omniglot28-*.pt"))) == 2  # a new version never reads old copies
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file\n")
    monkeypatch.setenv("VAEBENCH_CACHE", str(blocker))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(2):
            got = load_dataset("omniglot-28", tmp_path, n_valid=5).train_probs
    assert torch.equal(got, want)
    messages = {str(w.message) for w in caught}
    assert len(messages) == 1 and f"cache folder {blocker} cannot be written" in messages.pop()


# --- the real files ----------------------------------------------------------------------------------------------


@shared_has("FreyFaces/freyfaces.pkl")
def test_real_frey_faces():
    a, b = load_dataset("frey-faces", SHARED), load_dataset("frey-faces", SHARED)
    assert (a.train.shape, a.valid.shape, a.test.shape) == ((1565, 560), (200, 560), (200, 560))
    assert (a.binary, a.image_shape) == (False, (28, 20))
    for split in ("train", "valid", "test"):
        check_grey(getattr(a, split))
        assert torch.equal(getattr(a, split), getattr(b, split))
    every = torch.cat([a.train, a.valid, a.test])
    faces = (every * 255).round().to(torch.uint8)[np.argsort(split_permutation(1965, 0))].numpy()
    assert py2_pickle(faces) == (SHARED / "FreyFaces" / "freyfaces.pkl").read_bytes()  # every byte, in file order
    assert (round(float(every.min()) * 255), round(float(every.max()) * 255)) == (8, 238)
    assert 0.60 < float(every.mean()) < 0.61
    # the recorded split: these very test faces, whatever the machine or version
    assert sha256((a.test * 255).round().to(torch.uint8)) == (
        "92aebbe696737fa6ace253ced1d47c4a1c2d772a4822d36501dc770400d7c858"
    )


@shared_has("Caltech101Silhouettes/caltech101_silhouettes_28.mat")
def test_real_caltech_silhouettes_upright_object_one():
    path = SHARED / "Caltech101Silhouettes" / "caltech101_silhouettes_28.mat"
    a, b = load_dataset("caltech-silhouettes", SHARED), load_dataset("caltech-silhouettes", SHARED)
    assert (a.train.shape, a.valid.shape, a.test.shape) == ((4100, 784), (2264, 784), (2307, 784))
    for split in ("train", "valid", "test"):
        check_binary(getattr(a, split))
        assert torch.equal(getattr(a, split), getattr(b, split))
    images = read_caltech_silhouettes(path).reshape(-1, 28, 28)
    assert 0.44 < float(images.mean()) < 0.47  # object pixels; the background (border) is 0
    assert float(torch.cat([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], 1).mean()) < 0.03
    mat = scipy.io.loadmat(path)
    names = [str(c[0]) for c in mat["classnames"][0]]
    labels = torch.from_numpy(mat["Y"][0].astype(np.int64)) - 1
    pyramids = images[labels == names.index("pyramid")]
    assert len(pyramids) > 20 and float(pyramids[:, 20:].mean()) > 2 * float(pyramids[:, :8].mean())  # apex up
    umbrellas = images[labels == names.index("umbrella")]
    assert float(umbrellas[:, :8].mean()) > 2 * float(umbrellas[:, 20:].mean())  # the canopy on top
    planes = images[labels == names.index("Airplanes Side 2")]
    rows, cols = torch.arange(28.0).view(28, 1), torch.arange(28.0).view(1, 28)
    weight = planes.sum((1, 2))

    def spread(at: torch.Tensor) -> float:
        mean = (planes * at).sum((1, 2)) / weight
        return float(((planes * (at - mean.view(-1, 1, 1)) ** 2).sum((1, 2)) / weight).mean())

    assert spread(cols) > 1.5 * spread(rows)  # side views of airplanes: wide, not tall (not transposed)
    assert sha256(a.test.to(torch.uint8)) == "94ee90fe53e698c94e55ca4d678c400f31974e9736e379c23a95e56d6c5e68b0"


@shared_has("Omniglot/images_background.npz", "Omniglot/images_evaluation.npz")
def test_real_omniglot28(tmp_path):
    a = load_dataset("omniglot-28", SHARED)  # resized here (private cache)
    b = load_dataset("omniglot-28", SHARED)  # read from the cache
    assert (a.train.shape, a.valid.shape, a.test.shape) == ((23000, 784), (1345, 784), (8115, 784))
    for split in ("train", "valid", "test", "train_probs"):
        assert torch.equal(getattr(a, split), getattr(b, split))
    for split in (a.train, a.valid, a.test):
        check_binary(split)
    probs = a.train_probs.reshape(-1, 28, 28)
    assert float(probs.min()) == 0 and float(probs.max()) == 1
    assert 0.07 < float(probs.mean()) < 0.09 and 0.07 < float(a.test.mean()) < 0.09  # thin strokes (1) on 0
    assert float(torch.cat([probs[:, 0], probs[:, -1], probs[:, :, 0], probs[:, :, -1]], 1).mean()) < 0.01
    counts = (a.train_probs * datasets._area_window_sizes().float()).round().to(torch.uint8)
    assert sha256(counts) == "aa1dcc4a7ca4ef11bb2e5fdacb5ae36a67910c5fe9607a7a432cac1a31a4250e"  # recorded split


@shared_has("FashionMNIST/raw/train-images-idx3-ubyte")
def test_real_fashion_mnist_still_loads():
    data = load_dataset("fashion-mnist", SHARED)
    assert (data.train.shape, data.valid.shape, data.test.shape) == ((50000, 784), (10000, 784), (10000, 784))
    assert data.binary and data.train_probs.shape == (50000, 784)
    check_binary(data.test)
    assert 0.27 < float(data.test.mean()) < 0.30
