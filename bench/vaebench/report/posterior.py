"""For a model with a 2-D latent: the true posterior p(z|x) on a grid, the approximate posterior q(z|x) and
samples of the importance-weighted posterior q_EW, for a few random test images. Through the model interface only."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from vaebench.core.metrics import qew_samples  # noqa: E402
from vaebench.report.images import random_test_indices  # noqa: E402
from vaebench.report.plots import save  # noqa: E402

GRID = 160  # cells per axis
EDGE = 0.04  # the band at each border, as a fraction of the panel's width, whose mass must be negligible
EDGE_MASS = 1e-4  # the most true-posterior mass the border band may hold
LEVELS = [math.exp(-4.5), math.exp(-2.0), math.exp(-0.5)]  # contours: a Gaussian's 3, 2 and 1 s.d.


def latent_size(model) -> int:
    """The number of latent dimensions: the event size of the prior."""
    with torch.no_grad():
        return int(torch.Size(model.prior().event_shape).numel())


def _log_joint(model, x: torch.Tensor, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(x, z) on a GRID x GRID grid over ``box`` [[z1 lo, z1 hi], [z2 lo, z2 hi]]: (z1 grid, z2 grid, values)."""
    g1, g2 = torch.meshgrid(
        torch.linspace(*box[0].tolist(), GRID), torch.linspace(*box[1].tolist(), GRID), indexing="ij"
    )
    grid = torch.stack([g1, g2], -1)
    values = model.likelihood(grid).log_prob(x) + model.prior().log_prob(grid)
    return g1, g2, values


def _edge_mass(p: torch.Tensor) -> float:
    band = max(1, int(EDGE * GRID))
    inner = p[band:-band, band:-band].sum()
    return float(p.sum() - inner)


def _extent(p: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, tail: float = 1e-4) -> torch.Tensor:
    """The box holding all but ``tail`` of the mass on each axis' marginal."""
    box = []
    for axis, g in ((1, g1[:, 0]), (0, g2[0, :])):
        cdf = p.sum(axis).cumsum(0)
        lo = int((cdf < tail / 2).sum())
        hi = min(int((cdf < 1 - tail / 2).sum()), len(g) - 1)
        box.append([float(g[lo]), float(g[hi])])
    return torch.tensor(box)


def _widen(box: torch.Tensor, factor: float) -> torch.Tensor:
    centre, half = box.mean(1, keepdim=True), (box[:, 1:] - box[:, :1]) / 2
    return torch.cat([centre - factor * half, centre + factor * half], 1)


@torch.no_grad()
def posterior_box(
    model, x: torch.Tensor, start: torch.Tensor, keep: torch.Tensor | None = None, max_rounds: int = 12
) -> tuple:
    """A grid that holds the whole true posterior of ``x``: from ``start``, widened until the border band holds
    less than :data:`EDGE_MASS`, then narrowed to the posterior's extent (plus a margin, and the box ``keep``) if
    that is much smaller. Returns (z1 grid, z2 grid, normalised p(z|x) on the grid, box)."""
    box = start.clone()
    narrowed = False
    for _ in range(max_rounds):
        g1, g2, log_joint = _log_joint(model, x, box)
        p = torch.softmax(log_joint.flatten().double(), 0).reshape(log_joint.shape)
        if _edge_mass(p) > EDGE_MASS:
            box = _widen(box, 2.0)
            continue
        tight = _widen(_extent(p, g1, g2), 1.4)
        if keep is not None:
            tight = torch.stack([torch.minimum(tight[:, 0], keep[:, 0]), torch.maximum(tight[:, 1], keep[:, 1])], 1)
        width, tight_width = box[:, 1] - box[:, 0], tight[:, 1] - tight[:, 0]
        if narrowed or (tight_width > 0.6 * width).all():
            return g1, g2, p, box
        box = tight
        narrowed = True
    return g1, g2, p, box


def _q_moments(q, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return q.mean[i], q.stddev[i]
    except NotImplementedError:
        draws = q.sample((2000,))[:, i]
        return draws.mean(0), draws.std(0)


@torch.no_grad()
def plot_posterior_2d(name: str, model, data, out: Path, n_images: int = 4, k: int = 100, seed: int = 0) -> Path:
    """``posterior_2d_NAME.png``: for ``n_images`` random test images (seeded), the image, and in its panel the
    true posterior p(z|x) ∝ p(x|z) p(z) on a grid that holds all of it (black contours), q(z|x) (red dashed) and
    300 samples of q_EW with ``k`` candidates (blue)."""
    h, w = data.image_shape
    index = random_test_indices(len(data.test), n_images, seed)
    x = data.test[index]
    q = model.posterior(x)
    draws = qew_samples(model, x, k, 300, seed=seed)  # [300, n, 2]
    fig = plt.figure(figsize=(4.3 * n_images, 5.9), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 4.2])
    image_axes, axes = top.subplots(1, n_images, squeeze=False)[0], bottom.subplots(1, n_images, squeeze=False)[0]
    for i, (ax, iax) in enumerate(zip(axes, image_axes)):
        iax.imshow(x[i].reshape(h, w).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        iax.set_axis_off()
        iax.set_title(f"test image {int(index[i])}", fontsize=10)
        loc, scale = _q_moments(q, i)
        start = torch.stack([loc - 4 * scale, loc + 4 * scale], 1)
        g1, g2, p, box = posterior_box(model, x[i], start, keep=torch.stack([loc - 3 * scale, loc + 3 * scale], 1))
        true = p / p.max()
        q_i = model.posterior(x[i : i + 1])
        approx = (q_i.log_prob(torch.stack([g1, g2], -1)[:, :, None, :])[..., 0]).double()
        approx = torch.exp(approx - approx.max())
        ax.contour(g1, g2, true, levels=LEVELS, colors="black", linewidths=1.3)
        ax.contour(g1, g2, approx, levels=LEVELS, colors="tab:red", linewidths=1.2, linestyles="--")
        ax.scatter(draws[:, i, 0], draws[:, i, 1], s=4, alpha=0.35, color="tab:blue", linewidths=0)
        ax.set_xlim(*box[0].tolist())
        ax.set_ylim(*box[1].tolist())
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))
        ax.yaxis.set_major_locator(plt.MaxNLocator(5))
    handles = [
        plt.Line2D([], [], color="black", linewidth=1.3, label="true posterior p(z|x)"),
        plt.Line2D([], [], color="tab:red", linestyle="--", linewidth=1.2, label="q(z|x)"),
        plt.Line2D(
            [], [], color="tab:blue", marker="o", linestyle="none", markersize=4, label=f"samples of q_EW, k = {k}"
        ),
    ]
    bottom.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    top.suptitle(
        f"{name} on {data.name}: posteriors of {n_images} random test images (seed {seed}); contours at "
        "e^-1/2, e^-2, e^-9/2 of each density's peak (a Gaussian's 1, 2, 3 s.d.)",
        fontsize=11,
    )
    return save(fig, out / f"posterior_2d_{name}.png")
