"""Image grids of a trained model: test images and their reconstructions, samples from p(x) and, where the model
has them, a VampPrior's pseudo-inputs. Everything through the model interface (``posterior``, ``prior``,
``likelihood``) and the optional ``pseudo_inputs`` attribute."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from vaebench.report.plots import save  # noqa: E402

PAD_COLOUR = "#6baed6"  # between the images: apart from every grey level
MIN_CELL_PX = 56  # smaller images are enlarged by whole factors (nearest neighbour): 8x8 digits 7x, MNIST 2x


def random_test_indices(n_total: int, n: int, seed: int = 0) -> torch.Tensor:
    """A fixed random sample of ``n`` test indices (sorted). Never the first images: the static binarized MNIST
    test file is sorted by digit."""
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def _mean(dist) -> torch.Tensor:
    """The mean of p(x|z) (Bernoulli probabilities), or a sample where the distribution has no mean."""
    try:
        return dist.mean
    except NotImplementedError:
        return dist.sample()


def _scale(h: int, w: int) -> int:
    return max(1, -(-MIN_CELL_PX // min(h, w)))


def _grid(images: torch.Tensor, h: int, w: int, nrow: int) -> torch.Tensor:
    """[N, D] images in [0, 1] as one [H, W] picture, upscaled (nearest neighbour) so small images stay visible."""
    s = _scale(h, w)
    x = images.detach().float().cpu().clamp(0, 1).reshape(-1, 1, h, w)
    x = x.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
    return make_grid(x, nrow=nrow, padding=s if s > 1 else 2, pad_value=float("nan"))[0]  # NaN: PAD_COLOUR


def _show(grids: list[tuple[str, torch.Tensor]], title: str, path: Path, width_in: float = 10.0) -> Path:
    """Stack labelled grids (a row label each, on the left) under a title in one figure sized to fit them, and
    save it."""
    labelled = any(label for label, _ in grids)
    left, gap, title_in = (1.25 if labelled else 0.1), 0.12, 0.3 + 0.2 * title.count("\n") + 0.2
    axes_w = width_in - left - 0.1
    heights = [axes_w * g.shape[0] / g.shape[1] for _, g in grids]
    height = sum(heights) + gap * (len(grids) - 1) + title_in + 0.1
    fig = plt.figure(figsize=(width_in, height))
    top = height - title_in
    for (label, g), h in zip(grids, heights):
        ax = fig.add_axes((left / width_in, (top - h) / height, axes_w / width_in, h / height))
        top -= h + gap
        cmap = matplotlib.colormaps["gray"].with_extremes(bad=PAD_COLOUR)
        ax.imshow(g.numpy(), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10, labelpad=8)
        ax.grid(False)
    fig.suptitle(title, fontsize=11, y=1 - 0.12 / height, va="top")
    return save(fig, path)


@torch.no_grad()
def reconstructions(name: str, model, data, out: Path, n: int = 16, seed: int = 0) -> Path:
    """``images/NAME_reconstructions.png``: ``n`` test images from a seeded random sample (row "test image") over
    their reconstructions, the means of p(x | z = mean of q(z|x)) (row "reconstruction")."""
    h, w = data.image_shape
    index = random_test_indices(len(data.test), n, seed)
    x = data.test[index]
    q = model.posterior(x)
    try:
        z = q.mean
    except NotImplementedError:
        z = q.sample()
    recon = _mean(model.likelihood(z))
    grids = [("test image", _grid(x, h, w, n)), ("reconstruction", _grid(recon.reshape(n, -1), h, w, n))]
    title = (
        f"{name}: {n} random test images of {data.name} (seed {seed}) and their reconstructions\n"
        "reconstruction: the mean of p(x | z) (a sample where it has none), z = mean of q(z|x)"
    )
    return _show(grids, title, out / "images" / f"{name}_reconstructions.png")


@torch.no_grad()
def samples(name: str, model, data, out: Path, n: int = 64, seed: int = 0) -> Path:
    """``images/NAME_samples.png``: means of p(x|z) (a sample where it has none) for ``n`` seeded draws z ~ p(z)."""
    h, w = data.image_shape
    torch.manual_seed(seed)
    z = model.prior().sample((n,))
    x = _mean(model.likelihood(z)).reshape(n, -1)
    title = f"{name}: {n} samples from the model (means of p(x|z), z ~ p(z), seed {seed})"
    return _show([("", _grid(x, h, w, 16))], title, out / "images" / f"{name}_samples.png")


@torch.no_grad()
def pseudo_inputs(name: str, model, data, out: Path, n: int = 100) -> Path | None:
    """``images/NAME_pseudo_inputs.png``: the first ``n`` of the model's ``pseudo_inputs`` (a VampPrior's), if any."""
    pseudo = getattr(model, "pseudo_inputs", None)
    if pseudo is None:
        return None
    h, w = data.image_shape
    shown = torch.as_tensor(pseudo)[:n]
    which = f"all {len(shown)}" if len(shown) == len(pseudo) else f"the first {len(shown)} of {len(pseudo)}"
    title = f"{name}: {which} VampPrior pseudo-inputs (values in [0, 1])"
    return _show(
        [("", _grid(shown, h, w, 20 if len(shown) > 50 else 10))], title, out / "images" / f"{name}_pseudo_inputs.png"
    )


def image_grids(name: str, model, data, out: Path, seed: int = 0) -> list[Path]:
    """Reconstructions, samples and pseudo-inputs of one model; the paths written."""
    written = [
        reconstructions(name, model, data, out, seed=seed),
        samples(name, model, data, out, seed=seed),
        pseudo_inputs(name, model, data, out),
    ]
    return [p for p in written if p is not None]
