"""The tile sweep (vaebench.studies.tiles): every configuration gives the float64 answer to within a float32
rounding-error bound, on shapes that span several tiles of every size and that no tile divides (so
every mask and every loop-carried sum runs).

First-order bounds (Higham, gamma_n = n u / (1 - n u), u = 2^-24), per output row, with a few units of
rounding to spare for each exp and log (on a GPU ``tl.exp`` is an approximation within a few ulps):
- Bernoulli, out = sum_j x_j l_j - softplus(l_j) with l = h W^T + b: each logit carries at most
  gamma_{H+1} (sum_h |h_h W_jh| + |b_j|), and d out / d l_j = x_j - sigmoid(l_j) lies in [-1, 1]; the
  epilogue (about six operations a term) and the sum over D add gamma_{D+8} sum_j (|x_j l_j| + softplus(l_j)).
- Mixture, log sum_c exp(log_mix_c + z^2 . a_c + z . b_c + k_c) with a, b, k formed in float32: each
  component's exponent carries gamma_{2d+8} times the sum of its terms' magnitudes, and logsumexp
  (weights summing to 1) passes on at most the largest of those; the rescaled running sum of at most C
  terms in (0, 1] and the final log add gamma_{C+8} + gamma_2 |out|.
A tile-masking bug costs far more: log 2 per padded Bernoulli column, or a spurious mixture component.
"""

import dataclasses
import math

import pytest
import torch
from torch.nn import functional as F

from vaebench.core import kernels
from vaebench.studies import tiles

pytestmark = pytest.mark.skipif(kernels.triton_problem() is not None, reason=str(kernels.triton_problem()))
SMALL = tiles.SHAPES["small"]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
U = 2.0**-24


def gamma(n: int) -> float:
    return n * U / (1 - n * U)


def bernoulli_bound(t: dict[str, torch.Tensor]) -> torch.Tensor:
    h, w, b, x = (t[key].double() for key in ("features", "weight", "bias", "x"))
    logits = h @ w.T + b
    magnitude = h.abs() @ w.abs().T + b.abs()
    terms = (x * logits).abs() + F.softplus(logits)
    return gamma(w.shape[1] + 1) * magnitude.sum(-1) + gamma(w.shape[0] + 8) * terms.sum(-1)


def mixture_bound(t: dict[str, torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    z, loc, scale, log_mix = (t[key].double() for key in ("z", "loc", "scale", "log_mix"))
    precision = scale.pow(-2)
    n, dim = loc.shape
    constant = (
        log_mix.abs()
        + 0.5 * (loc.pow(2) * precision).sum(1)
        + scale.log().abs().sum(1)
        + 0.5 * dim * math.log(2 * math.pi)
    )
    magnitude = z.pow(2) @ (0.5 * precision).T + z.abs() @ (loc.abs() * precision).T + constant  # [S, C]
    return gamma(2 * dim + 8) * magnitude.max(1).values + gamma(n + 8) + gamma(2) * out.abs()


@pytest.mark.slow  # 72 configurations a kernel under the interpreter: 40-60 s each on 2 CPU cores
@pytest.mark.parametrize("kernel", ["bernoulli", "mixture"])
def test_every_tile_configuration_is_within_the_float32_bound(kernel):
    run, reference, _ = tiles.case(kernel, SMALL, DEVICE)
    t = tiles.inputs(SMALL)
    bound = bernoulli_bound(t) if kernel == "bernoulli" else mixture_bound(t, reference)
    assert bound.shape == reference.shape
    # compiled, each configuration is a compilation: a spread of a ninth of the grid (the committed first)
    checked = 0
    for settings in tiles.configs(kernel)[:: 1 if kernels.interpreted() else 9]:
        try:
            error = (
                run("triton", kernels.KernelOptions().with_tiles(kernel, settings)).double().cpu() - reference
            ).abs()
        except Exception as err:  # a GPU with less shared memory than the tile needs: a sweep note, not a bug
            if type(err).__name__ != "OutOfResources":
                raise
            continue
        assert bool((error <= bound).all()), (settings, float((error / bound).max()))
        checked += 1
    assert checked >= 8


def test_sweep_rows_mark_the_committed_tiles_and_respect_the_budget():
    rows = list(tiles.sweep(SMALL, DEVICE, kernel_names=("mixture",), limit=2))
    _, reference, _ = tiles.case("mixture", SMALL, DEVICE)
    largest = float(mixture_bound(tiles.inputs(SMALL), reference).max())
    assert [r["precision"] for r in rows] == ["torch", "ieee", "ieee"]
    assert [r["committed"] for r in rows] == [False, True, False]
    assert (rows[1]["block_m"], rows[1]["num_warps"]) == (
        kernels.MIXTURE_TILES.block_m,
        kernels.MIXTURE_TILES.num_warps,
    )
    assert (rows[2]["block_m"], rows[2]["block_n"], rows[2]["block_k"]) == (32, 32, 16)  # the grid's first point
    assert all(r["max_abs_error"] <= largest and r["ms"] > 0 and "note" not in r for r in rows)
    spent = list(tiles.sweep(SMALL, DEVICE, kernel_names=("bernoulli",), budget_s=0.0))
    assert [r["precision"] for r in spent] == ["torch", "ieee"] and "budget" in spent[1]["note"]


def test_tiles_are_checked_and_nothing_global_changes():
    """Tiles and options are frozen values passed to each call: a sweep builds new ones, the committed
    defaults never change, and there is no module-level switch left to forget to restore."""
    with pytest.raises(ValueError, match="powers of two"):
        kernels.Tiles(block_m=48, block_n=64, block_k=16)
    with pytest.raises(ValueError, match="powers of two"):
        kernels.Tiles(block_m=8, block_n=64, block_k=16)
    with pytest.raises(ValueError, match="num_warps"):
        kernels.Tiles(block_m=32, block_n=64, block_k=16, num_warps=0)
    with pytest.raises(ValueError, match="unknown kernel"):
        kernels.KernelOptions().with_tiles("normal", kernels.BERNOULLI_TILES)
    with pytest.raises(TypeError, match="Tiles"):
        kernels.KernelOptions(bernoulli={"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16})
    with pytest.raises(TypeError, match="KernelOptions"):
        tiles.case("mixture", SMALL, DEVICE)[0]("torch", {"precision": "tf32"})
    committed = kernels.KernelOptions()
    small = committed.with_tiles("bernoulli", kernels.Tiles(block_m=32, block_n=32, block_k=16))
    assert small.bernoulli.block_m == 32 and small.mixture == committed.mixture
    assert kernels.KernelOptions() == committed == kernels.DEFAULT_OPTIONS and committed.bernoulli.block_m == 128
    with pytest.raises(dataclasses.FrozenInstanceError):
        committed.bernoulli.block_m = 32
    assert kernels.Tiles(block_m=32, block_n=32, block_k=16).launch() == {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16}
    assert kernels.BERNOULLI_TILES.launch() == {
        "BLOCK_M": 128,
        "BLOCK_N": 64,
        "BLOCK_K": 16,
        "num_warps": 4,
        "num_stages": 3,
    }
    assert not any(
        hasattr(kernels, name) for name in ("DOT_PRECISION", "KERNEL_TILES", "dot_precision", "tile_settings")
    )
    assert tiles.configs("bernoulli")[0] == kernels.BERNOULLI_TILES and len(tiles.configs("bernoulli")) == 72
    assert len(set(tiles.configs("mixture"))) == 72  # the committed tiles first, not twice
