"""Importance-weighted bounds on log p(x) for any model with the ``vaebench.core.interface`` methods.

log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x),  z_k ~ q(z|x)
L_k     = log (1/k) sum_k w_k                          (Burda et al. 2015)
L_1 <= L_k <= log p(x) in expectation, and L_k -> log p(x) as k -> infinity. All in nats.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution, Independent, Normal, kl_divergence

from vaebench.core.fused import COMPILED, compiled_log_weights, has_bernoulli_head
from vaebench.core.interface import check_model
from vaebench.core.kernels import KernelOptions, bernoulli_log_lik, mixture_log_prob
from vaebench.core.mixture import DiagonalGaussianMixture
from vaebench.core.noise import NOISE_BLOCK, seeded_noise

DEFAULT_MEMORY_BYTES = 64 * 2**20  # on the CPU, chunks of ~5,000 rows stay in cache and run fastest
# How the log-weights are computed: plain PyTorch, the fused Triton kernels (vaebench.core.kernels), or
# the torch formula compiled by inductor (vaebench.core.fused).
BACKENDS = ("torch", "triton", COMPILED)


class NonFiniteLogWeight(FloatingPointError):
    """A log-weight was NaN or infinite; the message names the model and the example."""


def _noise_dim(q: Distribution) -> int | None:
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal):
        return q.event_shape[-1]
    return getattr(q, "noise_dim", None)


def supports_fused(model: object) -> bool:
    """True when p(x|z) = Bernoulli(logits = model.likelihood_head(model.likelihood_features(z)))."""
    return has_bernoulli_head(model)


def check_backend_name(backend: str) -> None:
    """Raise ``ValueError`` naming the choices unless ``backend`` is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(map(repr, BACKENDS))}")


def log_weights_of_samples(
    model,
    q: Distribution,
    prior: Distribution,
    z: torch.Tensor,
    x: torch.Tensor,
    backend: str = "torch",
    options: KernelOptions | None = None,
) -> torch.Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x) for given samples z [K, B, d], x [B, D] -> [K, B].

    The log-weight of every backend: ``torch`` computes the Bernoulli and mixture terms with plain
    PyTorch, ``triton`` with the fused kernels of :mod:`vaebench.core.kernels`, run as ``options`` says
    (dot precision and tiles; default the committed :data:`vaebench.core.kernels.DEFAULT_OPTIONS`);
    ``compiled`` the whole log-weight (decoder, Bernoulli term, prior and posterior log-densities)
    through ``torch.compile``, :func:`vaebench.core.fused.compiled_log_weights` (the eager torch formula,
    said once, where it cannot compile).

    log p(x|z) uses ``bernoulli_log_lik`` when ``supports_fused(model)``, log p(z) uses
    ``mixture_log_prob`` when the prior is a ``DiagonalGaussianMixture``; otherwise each falls back
    to ``model.likelihood(z).log_prob(x)`` / ``prior.log_prob(z)``. log q(z|x) is plain torch.
    """
    check_backend_name(backend)
    if backend == COMPILED:
        return compiled_log_weights(model, q, prior, z, x)
    if supports_fused(model):
        head = model.likelihood_head
        bias = head.bias if head.bias is not None else head.weight.new_zeros(head.out_features)
        log_lik = bernoulli_log_lik(model.likelihood_features(z), head.weight, bias, x, backend, options)
    else:
        log_lik = model.likelihood(z).log_prob(x)
    if isinstance(prior, DiagonalGaussianMixture):
        log_prior = mixture_log_prob(z, prior.loc, prior.scale, prior.log_mix, backend, options)
    else:
        log_prior = prior.log_prob(z)
    return log_lik + log_prior - q.log_prob(z)


def sample_posterior(
    q: Distribution,
    k: int,
    seed: int | None = None,
    index: torch.Tensor | None = None,
    start: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """z ~ q(z|x), [k, B, d]; samples start..start+k-1 of each example's seeded stream (drawn on
    ``device``) if ``seed``."""
    dim = _noise_dim(q)
    if seed is None or dim is None:
        return q.rsample((k,)) if q.has_rsample else q.sample((k,))
    if index is None:
        index = torch.arange(q.batch_shape[0])
    eps = seeded_noise(seed, index, start, start + k, dim, device)
    if isinstance(q, Independent):
        return q.base_dist.loc + q.base_dist.scale * eps
    return q.rsample_from_noise(eps)


def weighted_samples(
    model,
    x: torch.Tensor,
    k: int,
    *,
    seed: int | None = None,
    index: torch.Tensor | None = None,
    start: int = 0,
    q: Distribution | None = None,
    prior: Distribution | None = None,
    backend: str = "torch",
    kernel_options: KernelOptions | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z [k, B, d], log w [k, B]) with z_k ~ q(z|x) and log w = log p(x, z_k) - log q(z_k|x).

    Where the model exposes its Bernoulli output layer, or has a mixture prior, those terms go
    through ``vaebench.core.kernels``: ``backend="torch"`` is the plain PyTorch formula, ``"triton"`` the
    fused kernels (run as ``kernel_options`` says); anything else uses ``model.likelihood(z).log_prob(x)``
    and ``prior.log_prob(z)``. ``"compiled"`` is the torch formula compiled by inductor
    (:mod:`vaebench.core.fused`).
    """
    q = model.posterior(x) if q is None else q
    prior = model.prior() if prior is None else prior
    z = sample_posterior(q, k, seed, index, start, x.device)
    return z, log_weights_of_samples(model, q, prior, z, x, backend, kernel_options)


def log_weights(
    model,
    x: torch.Tensor,
    k: int,
    *,
    seed: int | None = None,
    index: torch.Tensor | None = None,
    start: int = 0,
    q: Distribution | None = None,
    prior: Distribution | None = None,
    backend: str = "torch",
    kernel_options: KernelOptions | None = None,
) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k|x) for k posterior samples per example: x [B, D] -> [k, B].

    Uses ``model.log_weights(x, k)`` when the model defines it and no seed is asked for. ``q`` and
    ``prior`` may be passed in so that chunked callers build them once.
    """
    check_model(model)
    if seed is None and q is None and hasattr(model, "log_weights"):
        return model.log_weights(x, k)
    return weighted_samples(
        model,
        x,
        k,
        seed=seed,
        index=index,
        start=start,
        q=q,
        prior=prior,
        backend=backend,
        kernel_options=kernel_options,
    )[1]


def memory_budget(device: torch.device) -> int:
    """Bytes a chunk may use by default: a quarter of the free memory of a CUDA device, else 64 MiB."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 4
    return DEFAULT_MEMORY_BYTES


def default_chunk_size(batch: int, dim_x: int, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> int:
    """Samples per chunk so that about 4 float32 [chunk, batch, dim_x] tensors fit in ``memory_bytes``."""
    return max(1, memory_bytes // (16 * batch * max(dim_x, 1)))


def chunk_plan(
    batch: int,
    dim_x: int,
    ks: tuple[int, ...],
    chunk_size: int | None = None,
    *,
    seeded: bool,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> tuple[int, int]:
    """(samples per chunk, examples per sub-batch) of :func:`iwae_bounds` for a batch of ``batch`` examples of
    dimension ``dim_x``: ``chunk_size`` (default: what fits ``memory_bytes``) rounded down to a multiple of
    every smaller k and, when ``seeded``, of ``NOISE_BLOCK`` (at least one such multiple, at most K), and as
    many examples as a chunk of them fits the budget. Raises ``ValueError`` for a bad ladder ``ks``."""
    k = max(ks)
    if min(ks) < 1:
        raise ValueError(f"k={min(ks)}: the number of importance samples must be at least 1")
    smaller = sorted({m for m in ks if m < k})
    if any(k % m for m in smaller):
        raise ValueError(f"every k in {ks} must divide the largest, {k}")
    step = math.lcm(*smaller) if smaller else 1
    if seeded:  # whole noise blocks: a chunk that cut one would regenerate it
        step = math.lcm(step, NOISE_BLOCK)
    chunk_size = chunk_size or default_chunk_size(batch, dim_x, memory_bytes)
    chunk_size = min(k, max(step, chunk_size // step * step))
    return chunk_size, max(1, default_chunk_size(chunk_size, dim_x, memory_bytes))


@torch.no_grad()
def iwae_bounds(
    model,
    x: torch.Tensor,
    ks: tuple[int, ...],
    chunk_size: int | None = None,
    *,
    seed: int | None = None,
    index: torch.Tensor | None = None,
    name: str | None = None,
    with_variance: bool = False,
    backend: str = "torch",
    memory_bytes: int | None = None,
    prior: Distribution | None = None,
    kernel_options: KernelOptions | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """L_m for every m in ``ks`` from one set of K = max(ks) samples per example: [len(ks), B] nats.

    L_K = log (1/K) sum_k w_k; each smaller m must divide K, and L_m is the average of the bound
    over the K/m disjoint groups of m consecutive samples (an unbiased estimate of E L_m with less
    variance than one group). Samples are drawn in chunks of ``chunk_size`` (default: what fits in
    ``memory_bytes``, itself by default :func:`memory_budget`; rounded to a multiple of every
    smaller m and, when seeded, of ``NOISE_BLOCK``), and the examples in sub-batches small enough
    that a chunk of all of them fits the budget too; logsumexps combine in float64 with
    ``logaddexp``, so precision does not degrade with K. With ``seed`` the samples of example
    ``index[b]`` are fixed (see :func:`seeded_noise`), so results do not depend on batch or chunk
    size. Raises :class:`NonFiniteLogWeight` naming ``name`` and the example on a NaN/inf weight.
    ``prior`` may be passed in so that a caller evaluating many batches builds p(z) once (a
    VampPrior encodes its pseudo-inputs once per evaluation). ``kernel_options`` (dot precision, tiles)
    reach the fused kernels of ``backend="triton"``; ``backend="compiled"`` compiles the log-weight with
    inductor (:mod:`vaebench.core.fused`: one compilation per model structure and shape pattern, reused by
    every chunk and batch).

    With ``with_variance`` also returns the Monte Carlo variance of each estimate, [len(ks), B]:
    for m < K the variance of the K/m group bounds divided by K/m; for K, by the delta method
    (Var(L_m) ~ Var(w) / (m E[w]^2) for large m), that of the largest smaller m (NaN if none).
    """
    check_model(model)
    check_backend_name(backend)
    k = max(ks)
    smaller = sorted({m for m in ks if m < k})
    budget = memory_bytes if memory_bytes is not None else memory_budget(x.device)
    chunk_size, per_batch = chunk_plan(
        x.shape[0], x.shape[-1], ks, chunk_size, seeded=seed is not None, memory_bytes=budget
    )
    use_hook = seed is None and hasattr(model, "log_weights")
    prior = None if use_hook else (model.prior() if prior is None else prior)
    if x.shape[0] > per_batch:  # rounding up to ``step`` made a chunk of the whole batch too big: split it
        index = torch.arange(x.shape[0]) if index is None else index
        parts = [
            iwae_bounds(
                model,
                x[i : i + per_batch],
                ks,
                chunk_size,
                seed=seed,
                index=index[i : i + per_batch],
                name=name,
                with_variance=with_variance,
                backend=backend,
                memory_bytes=budget,
                prior=prior,
                kernel_options=kernel_options,
            )
            for i in range(0, x.shape[0], per_batch)
        ]
        if with_variance:
            return torch.cat([b for b, _ in parts], dim=1), torch.cat([v for _, v in parts], dim=1)
        return torch.cat(parts, dim=1)
    q = None if use_hook else model.posterior(x)
    total = None
    group_sums = {m: torch.zeros(x.shape[0], dtype=torch.float64, device=x.device) for m in smaller}
    group_squares = {m: torch.zeros_like(group_sums[m]) for m in smaller}
    for start in range(0, k, chunk_size):
        n = min(chunk_size, k - start)
        lw = log_weights(
            model,
            x,
            n,
            seed=seed,
            index=index,
            start=start,
            q=q,
            prior=prior,
            backend=backend,
            kernel_options=kernel_options,
        ).double()
        check_finite(lw, name or type(model).__name__, index)
        part = torch.logsumexp(lw, dim=0)
        total = part if total is None else torch.logaddexp(total, part)
        for m in smaller:
            groups = torch.logsumexp(lw.reshape(n // m, m, -1), dim=1) - math.log(m)
            group_sums[m] += groups.sum(0)
            group_squares[m] += groups.pow(2).sum(0)
    by_k = {k: total - math.log(k), **{m: group_sums[m] / (k // m) for m in smaller}}
    bounds = torch.stack([by_k[m] for m in ks]).to(x.dtype)
    if not with_variance:
        return bounds
    var = {}
    for m in smaller:
        g = k // m
        var[m] = (group_squares[m] - group_sums[m].pow(2) / g).clamp(min=0) / max(g - 1, 1) / g
    var[k] = var[smaller[-1]] if smaller else torch.full_like(total, math.nan)
    return bounds, torch.stack([var[m] for m in ks])


@torch.no_grad()
def all_log_weights(
    model,
    x: torch.Tensor,
    k: int,
    chunk_size: int | None = None,
    *,
    seed: int | None = None,
    index: torch.Tensor | None = None,
    name: str | None = None,
    backend: str = "torch",
    memory_bytes: int | None = None,
    prior: Distribution | None = None,
    kernel_options: KernelOptions | None = None,
) -> torch.Tensor:
    """Every log-weight log p(x, z_k) - log q(z_k|x), k = 1..K, of every example: x [B, D] -> [K, B] float64.

    The samples, chunks and sub-batches of :func:`iwae_bounds` (so with ``seed`` the same numbers whatever
    the batch and chunk size), kept instead of reduced, for the estimators of
    :mod:`vaebench.core.diagnostics` (K x B x 8 bytes: 4 MB for K = 5000 and 100 examples). Raises
    :class:`NonFiniteLogWeight` naming ``name`` and the example on a NaN/inf weight.
    """
    check_model(model)
    check_backend_name(backend)
    budget = memory_bytes if memory_bytes is not None else memory_budget(x.device)
    chunk_size, per_batch = chunk_plan(
        x.shape[0], x.shape[-1], (k,), chunk_size, seeded=seed is not None, memory_bytes=budget
    )
    index = torch.arange(x.shape[0]) if index is None else index
    prior = model.prior() if prior is None else prior
    out = torch.empty(k, x.shape[0], dtype=torch.float64, device=x.device)
    for b in range(0, x.shape[0], per_batch):
        xb, ib = x[b : b + per_batch], index[b : b + per_batch]
        q = model.posterior(xb)
        for start in range(0, k, chunk_size):
            n = min(chunk_size, k - start)
            lw = weighted_samples(
                model,
                xb,
                n,
                seed=seed,
                index=ib,
                start=start,
                q=q,
                prior=prior,
                backend=backend,
                kernel_options=kernel_options,
            )[1].double()
            check_finite(lw, name or type(model).__name__, ib)
            out[start : start + n, b : b + len(xb)] = lw
    return out


def iwae_bound(
    model,
    x: torch.Tensor,
    k: int,
    chunk_size: int | None = None,
    *,
    seed: int | None = None,
    index: torch.Tensor | None = None,
    name: str | None = None,
    backend: str = "torch",
    kernel_options: KernelOptions | None = None,
) -> torch.Tensor:
    """L_k = log (1/k) sum_k w_k per example, x [B, D] -> [B] nats (see :func:`iwae_bounds`)."""
    return iwae_bounds(
        model, x, (k,), chunk_size, seed=seed, index=index, name=name, backend=backend, kernel_options=kernel_options
    )[0]


def check_finite(lw: torch.Tensor, name: str, index: torch.Tensor | None = None) -> None:
    """Raise :class:`NonFiniteLogWeight` if any log-weight [k, B] is NaN or infinite."""
    bad = ~torch.isfinite(lw)
    if bad.any():
        column = int(bad.nonzero()[0, 1])
        example = int(index[column]) if index is not None else column
        raise NonFiniteLogWeight(
            f"model {name}: log-weight is {float(lw[bad][0])} for test example {example}; "
            "check the checkpoint (NaN weights?) and that the data match the model"
        )


def elbo_terms(
    model, x: torch.Tensor, n_samples: int = 1, *, seed: int | None = None, index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E_q log p(x|z), KL(q(z|x) || p(z))), each [B].

    The KL is analytic where ``torch.distributions`` has it registered, otherwise the Monte Carlo
    estimate E_q[log q(z|x) - log p(z)] from the same ``n_samples`` draws.
    """
    check_model(model)
    q, prior = model.posterior(x), model.prior()
    z = sample_posterior(q, n_samples, seed, index, device=x.device)  # [n, B, d]
    reconstruction = model.likelihood(z).log_prob(x).mean(0)
    try:
        kl = kl_divergence(q, prior)
    except NotImplementedError:
        kl = (q.log_prob(z) - prior.log_prob(z)).mean(0)
    return reconstruction, kl.expand_as(reconstruction)


@torch.no_grad()
def elbo(
    model, x: torch.Tensor, n_samples: int = 1, *, seed: int | None = None, index: torch.Tensor | None = None
) -> torch.Tensor:
    """L_1 = E_q log p(x|z) - KL(q(z|x) || p(z)) per example, [B] nats (analytic KL where it exists)."""
    reconstruction, kl = elbo_terms(model, x, n_samples, seed=seed, index=index)
    return reconstruction - kl
