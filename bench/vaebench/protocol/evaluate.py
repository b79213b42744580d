"""The common evaluation protocol: one record of every number, for any model with the interface.

Test log-likelihood is L_5000 (Burda et al. 2015), averaged over the test points; its ``_se`` is
the standard error of that mean over test points, its ``_mc_se`` the Monte Carlo error for these points
(the jackknife over each point's K draws). L_k for smaller k come from the same samples (averages over
disjoint groups), the ELBO is the mean of the same K log-weights, and JVI_1 and the k-hat and ESS
diagnostics are computed from them too (``vaebench.core.diagnostics.point_estimates``). Active units use the whole
evaluated test set (population variance, strict ``>`` threshold). ELBO surgery uses the whole
training split for the aggregate posterior.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import time
import warnings
from pathlib import Path

import torch
from torch.distributions import constraints
from tqdm import tqdm

from vaebench.core.diagnostics import KHAT_UNRELIABLE, point_estimates
from vaebench.core.estimators import all_log_weights
from vaebench.core.metrics import NotGaussianPosterior, active_units, elbo_surgery
from vaebench.families.likelihoods import grey_levels
from vaebench.protocol.datasets import DataError, Dataset
from vaebench.protocol.files import atomic_path, content_digest
from vaebench.protocol.record import Record, SurgeryTerms
from vaebench.protocol.settings import PROTOCOL_VERSION, Settings


def _load_progress(path: Path | None, key: str) -> dict:
    """The finished batches stored under ``key``; none if the file is missing, from another run, or
    unreadable or damaged (its checksum does not match: removed with a warning, its batches evaluated again)."""
    if path is None or not path.is_file():
        return {}
    try:
        saved = torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        warnings.warn(
            f"progress file {path} is unreadable ({type(err).__name__}); starting this evaluation "
            "again from its first batch",
            stacklevel=2,
        )
        path.unlink(missing_ok=True)
        return {}
    if not isinstance(saved, dict) or saved.get("key") != key:
        return {}
    if saved.get("digest") != content_digest(saved.get("done")):
        warnings.warn(
            f"progress file {path} is damaged (its content does not match its checksum); starting this "
            "evaluation again from its first batch",
            stacklevel=2,
        )
        path.unlink(missing_ok=True)
        return {}
    return saved["done"]


def _save_progress(path: Path | None, key: str, done: dict) -> Path | None:
    """Store the finished batches; the path to use next time, None once a write failed (a full disk: warn
    once and go on without resume points, since the progress file only saves time)."""
    if path is None:
        return None
    try:
        with atomic_path(path) as tmp:
            torch.save({"key": key, "done": done, "digest": content_digest(done)}, tmp)
    except (OSError, RuntimeError) as err:
        warnings.warn(
            f"progress file {path} could not be written ({str(err).splitlines()[0]}); going on without resume points",
            stacklevel=2,
        )
        return None
    return path


WORST_POINTS = 5  # test points listed by k-hat in the record
PER_POINT = ("jvi", "jvi_mc_se", "elbo", "elbo_mc_se", "ess", "khat")


def per_example_estimates(
    model,
    x: torch.Tensor,
    ks: tuple[int, ...],
    seed: int,
    batch_size: int = 100,
    chunk_size: int | None = None,
    name: str = "model",
    progress_path: Path | None = None,
    backend: str = "torch",
    ids: torch.Tensor | None = None,
    fingerprint: str = "",
) -> dict[str, torch.Tensor]:
    """Every row of x evaluated from its K = max(ks) seeded log-weights (:func:`all_log_weights`), in batches
    of ``batch_size``: ``bounds`` and ``bounds_var`` [len(ks), N], and each of :data:`PER_POINT` [N] (see
    :class:`vaebench.core.diagnostics.PointEstimates`). ``ids`` [N] name the rows' noise streams (their test
    indices; default 0..N-1). With ``progress_path`` each finished batch is stored and a later call with the
    same arguments resumes where it stopped, giving the same numbers (the progress key holds a hash of x and
    ``fingerprint``, which the caller sets to what else fixes the numbers: the checkpoint and the code); the
    caller removes the file (:func:`rank_progress_path`) once the results it feeds are stored.

    Under ``torch.distributed`` (e.g. launched by ``torchrun``) rank r takes batches r, r + W, ...
    and every rank receives all results: the same batches with the same per-example seeds, hence
    exactly the numbers of a single process."""
    rank, world = distributed_rank_world()
    ids = torch.arange(len(x)) if ids is None else ids
    content = hashlib.sha256(x.detach().cpu().numpy().tobytes() + ids.numpy().tobytes()).hexdigest()
    key = f"{name}|{ks}|{seed}|{len(x)}|{batch_size}|{rank}/{world}|{backend}|{x.device.type}|{content}|{fingerprint}"
    progress_path = rank_progress_path(progress_path)
    done = _load_progress(progress_path, key)
    mine = range(rank * batch_size, len(x), world * batch_size)
    with torch.no_grad():
        prior = model.prior()
    for start in tqdm(mine, desc=f"{name} L_{max(ks)}", unit="batch", disable=None if rank == 0 else True):
        if start in done:
            continue
        xb = x[start : start + batch_size]
        lw = all_log_weights(
            model,
            xb,
            max(ks),
            chunk_size,
            seed=seed,
            index=ids[start : start + len(xb)],
            name=name,
            backend=backend,
            prior=prior,
        )
        done[start] = {field: value.cpu() for field, value in vars(point_estimates(lw, ks)).items()}
        progress_path = _save_progress(progress_path, key, done)
    if world > 1:
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, done)
        done = {start: part for shard in gathered for start, part in shard.items()}
    order = sorted(done)
    return {field: torch.cat([done[s][field] for s in order], dim=-1) for field in done[order[0]]}


def rank_progress_path(path: Path | None) -> Path | None:
    """This process's progress file: ``path`` itself, or one per rank under ``torch.distributed``."""
    rank, world = distributed_rank_world()
    if path is None or world == 1:
        return path
    return path.with_name(f"{path.stem}.rank{rank}of{world}.pt")


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised ``torch.distributed`` group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@torch.no_grad()
def check_data_kind(model, dataset: Dataset, x: torch.Tensor, name: str = "model") -> None:
    """Raise :class:`DataError` when the model's p(x|z) cannot be a likelihood of ``dataset``: a decoder over {0, 1}
    (Bernoulli) given 8-bit grey levels, a decoder over the 256 grey levels given binary data, or data outside
    the decoder's support. Asks p(x|z) at the posterior mean of ``x`` [1, D] (any model with the interface)."""
    q = model.posterior(x)
    try:
        z = q.mean
    except NotImplementedError:
        z = q.sample()
    try:
        support = model.likelihood(z[None]).support
    except NotImplementedError:  # a distribution that does not state its support: nothing to check
        return
    base = getattr(support, "base_constraint", support)
    if base is constraints.boolean and not dataset.binary:
        raise DataError(
            f"model {name} has a Bernoulli decoder (p(x|z) over {{0, 1}}), but {dataset.name} holds 8-bit grey "
            'levels: evaluate it on binary data, or use a grey decoder (likelihood = "logistic" or "gaussian")'
        )
    if base is grey_levels and dataset.binary:
        raise DataError(
            f"model {name} has a decoder over 256 grey levels, but {dataset.name} is binary: evaluate it on 8-bit "
            'grey data, or use likelihood = "bernoulli"'
        )
    if not bool(support.check(x).all()):
        raise DataError(f"the {dataset.name} data lie outside the support of model {name}'s p(x|z) ({support})")


def test_subset(n_total: int, n_test: int) -> torch.Tensor:
    """The test indices evaluated: all of them, or a fixed random subset (seed 0, sorted). Never a
    prefix: the static binarized MNIST test file is ordered by digit (images 1000-1999 are mostly
    ones, pixel mean 0.076 against 0.13), so its first points are not a fair sample."""
    if n_test == n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(0))[:n_test].sort().values


def _mc_se(variances: torch.Tensor) -> float:
    """Monte Carlo standard error of the mean over points of estimates with these variances [N]: the points'
    draws are independent, so sqrt(sum var) / N."""
    return float(variances.sum().sqrt() / len(variances))


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    return float(v.mean()), float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def evaluate(
    model,
    dataset: Dataset,
    settings: Settings = Settings(),
    *,
    device: str | torch.device = "cpu",
    surgery: bool = True,
    name: str = "model",
    progress_path: Path | None = None,
    fingerprint: str = "",
) -> tuple[Record, dict[str, torch.Tensor]]:
    """Run the protocol on ``model`` (any object with the interface); returns (record, per-example values).

    From one set of K seeded samples per test point: L_k for every k of ``settings.ladder`` with its Monte
    Carlo error (jackknife for L_K), the ELBO (mean log-weight of all K draws) with its Monte Carlo error,
    JVI_1 (bias-corrected L_K) with its errors, and the importance-sampling diagnostics (k-hat, ESS), see
    :mod:`vaebench.core.diagnostics`; active units over the evaluated points and, with ``surgery``, the
    ELBO-surgery terms over the training split. Per-example [n_test]: ``test_index``, ``L_K``, ``L_K_mc_se``
    and :data:`PER_POINT`. With ``settings.n_test`` below the test-set size the points are a fixed random
    subset (:func:`test_subset`). The same call gives the same numbers whatever the batch and chunk sizes.
    """
    n_total = len(dataset.test)
    n_test = n_total if settings.n_test is None else settings.n_test
    if n_test > n_total:
        raise ValueError(f"n_test={n_test}: the {dataset.name} test set has {n_total} points; choose 1..{n_total}")
    started = time.perf_counter()
    device = torch.device(device)
    model = model.to(device) if hasattr(model, "to") else model
    ids = test_subset(n_total, n_test)
    x = dataset.test[ids].to(device)
    dataset.check_values(x, f"{dataset.name} test split")
    check_data_kind(model, dataset, x[:1], name)
    ks, k, seed, batch_size = settings.ladder, settings.k, settings.seed, settings.batch_size
    est = per_example_estimates(
        model, x, ks, seed, batch_size, settings.chunk_size, name, progress_path, settings.backend, ids, fingerprint
    )
    bounds, bounds_var, elbos = est["bounds"], est["bounds_var"], est["elbo"]
    ll, ll_se = _mean_se(bounds[-1])
    el, el_se = _mean_se(elbos)
    jvi, jvi_se = _mean_se(est["jvi"])
    worst = est["khat"].nan_to_num(-math.inf).argsort(descending=True, stable=True)[:WORST_POINTS]
    count, _ = active_units(model, x)
    terms, note = None, ""
    if surgery:
        try:
            terms = SurgeryTerms(
                **elbo_surgery(model, dataset.train.to(device), n_samples=settings.surgery_samples, seed=seed)
            )
        except NotGaussianPosterior as err:
            note = str(err).split(";")[0]
    record = Record(
        model=name,
        dataset=dataset.name,
        n_test=n_test,
        k=k,
        seed=seed,
        log_likelihood=ll,
        log_likelihood_se=ll_se,
        elbo=el,
        elbo_se=el_se,
        elbo_gap=ll - el,
        elbo_gap_se=_mean_se(bounds[-1] - elbos)[1],
        log_likelihood_mc_se=_mc_se(bounds_var[-1]),
        bounds={m: float(bounds[i].mean()) for i, m in enumerate(ks)},
        bounds_mc_se={m: _mc_se(bounds_var[i]) for i, m in enumerate(ks)},
        active_units=count if isinstance(count, int) else "+".join(map(str, count)),
        active_units_total=count if isinstance(count, int) else sum(count),
        active_units_set="test" if n_test == n_total else f"test subset ({n_test} of {n_total})",
        surgery=terms,
        surgery_note=note,
        device=str(device),
        backend=settings.backend,
        torch=str(torch.__version__),
        protocol_version=PROTOCOL_VERSION,
        wall_time_s=time.perf_counter() - started,
        elbo_mc_se=_mc_se(est["elbo_mc_se"].square()),
        log_likelihood_jvi=jvi,
        log_likelihood_jvi_se=jvi_se,
        log_likelihood_jvi_mc_se=_mc_se(est["jvi_mc_se"].square()),
        log_likelihood_bias=jvi - ll,
        khat_unreliable=float((est["khat"] > KHAT_UNRELIABLE).double().mean()),
        khat_undefined=int(est["khat"].isnan().sum()),
        median_ess=float(est["ess"].nanquantile(0.5)),
        worst_khat=" ".join(f"{int(ids[i])}:{float(est['khat'][i]):.2f}" for i in worst if not est["khat"][i].isnan()),
    )
    per_example = {"test_index": ids, f"L_{k}": bounds[-1], f"L_{k}_mc_se": bounds_var[-1].sqrt()}
    return record, per_example | {field: est[field] for field in PER_POINT}
