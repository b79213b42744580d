"""Seeded per-example noise: each standard normal a pure function of (seed, example, sample, coordinate).

So results do not depend on how examples are batched or samples chunked, and distinct examples never
share a stream. On the CPU: numpy's Philox (a 128-bit key; torch's CPU generator keeps only 32 bits of
a seed), example ``index[b]``'s stream cut into blocks of ``NOISE_BLOCK`` samples, each keyed by
``numpy.random.SeedSequence([seed, index, block])``. On CUDA: Triton's counter-based Philox in one
launch (:func:`vaebench.core.kernels.keyed_normals`). The two devices draw different, equally valid samples.

Cost on the CPU: numpy fills about 45 million float32 normals a second per core, so the 5,000 x 40 normals
of one L_5000 evaluation of a z = 40 model take about 4.5 ms of one core (8% of the eager evaluation's time
on this project's 2-core CPU, 10% of the compiled one's). Numpy releases the GIL while it fills a block, so
the blocks of a call are drawn by ``torch.get_num_threads()`` threads at once, each written straight into
the output: the same values (``tests/core/test_fused.py`` compares them with the first implementation) in
3-3.5 ms on 2 shared cores. Numpy's generator itself is the floor: the values are fixed by its Philox stream
and its float32 ziggurat, which only numpy computes exactly.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

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
    examples = index.tolist()
    out = np.empty((max(stop - start, 0), len(examples), dim), dtype=np.float32)

    def fill(job: tuple[int, int]) -> None:  # block ``block`` of column b's example, into its rows of ``out``
        b, block = job
        lo, hi = max(start, block * NOISE_BLOCK), min(stop, (block + 1) * NOISE_BLOCK)
        values = _noise_block(np.random.SeedSequence([seed, examples[b], block]), dim)
        out[lo - start : hi - start, b] = values[lo - block * NOISE_BLOCK : hi - block * NOISE_BLOCK]

    jobs = [(b, block) for b in range(len(examples)) for block in range(first, last + 1)]
    pool = _pool() if len(jobs) > 1 else None
    if pool is None:
        for job in jobs:
            fill(job)
    else:
        list(pool.map(fill, jobs))
    return torch.from_numpy(out).to(device)


def _noise_block(key: np.random.SeedSequence, dim: int) -> np.ndarray:
    """[NOISE_BLOCK, dim] float32 standard normals from numpy's Philox stream ``key``."""
    return np.random.Generator(np.random.Philox(key)).standard_normal((NOISE_BLOCK, dim), dtype=np.float32)


_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor | None:
    """Threads that draw noise blocks, as many as torch's intra-op threads (None for one: draw inline); one
    pool per process and thread count (a forked child makes its own: the parent's threads are not in it)."""
    threads = torch.get_num_threads()
    if threads < 2:
        return None
    key = (os.getpid(), threads)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vaebench-noise")
        return _pools[key]
