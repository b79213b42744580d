"""Seeded per-example noise: each standard normal a pure function of (seed, example, sample, coordinate).

So results do not depend on how examples are batched or samples chunked, and distinct examples never
share a stream. On the CPU: numpy's Philox (a 128-bit key; torch's CPU generator keeps only 32 bits of
a seed), example ``index[b]``'s stream cut into blocks of ``NOISE_BLOCK`` samples, each keyed by
``numpy.random.SeedSequence([seed, index, block])``. On CUDA: Triton's counter-based Philox in one
launch (:func:`vaebench.core.kernels.keyed_normals`). The two devices draw different, equally valid samples.
"""

from __future__ import annotations

import numpy as np
import torch

from vaebench.core.kernels import KEY_INDEX_BITS, keyed_normals

NOISE_BLOCK = 500
MAX_SEED = 2 ** (63 - KEY_INDEX_BITS) - 1  # CUDA keys Philox with seed * 2**40 + example index


def seeded_noise(
    seed: int, index: torch.Tensor, start: int, stop: int, dim: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Standard normal noise for samples start..stop-1 of each example ``index[b]``: [stop - start, B, dim]
    (see the module docstring)."""
    if seed < 0:
        raise ValueError(f"seed={seed}: use a non-negative integer")
    device = torch.device(device)
    if device.type == "cuda":
        return keyed_normals(seed, index, start, stop, dim, device)
    first, last = start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK
    columns = []
    for i in index.tolist():
        blocks = [_noise_block(np.random.SeedSequence([seed, i, block]), dim) for block in range(first, last + 1)]
        columns.append(torch.cat(blocks)[start - first * NOISE_BLOCK : stop - first * NOISE_BLOCK])
    return torch.stack(columns, dim=1).to(device)


def _noise_block(key: np.random.SeedSequence, dim: int) -> torch.Tensor:
    """[NOISE_BLOCK, dim] standard normals from numpy's Philox stream ``key``."""
    values = np.random.Generator(np.random.Philox(key)).standard_normal((NOISE_BLOCK, dim), dtype=np.float32)
    return torch.from_numpy(values)
