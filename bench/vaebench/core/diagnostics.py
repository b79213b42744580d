"""Honest uncertainty for importance-weighted bounds: pure functions of a log-weight tensor.

Every function takes ``lw`` of shape [K, B]: ``lw[k, b] = log p(x_b, z_k) - log q(z_k | x_b)`` with
z_1..z_K drawn independently from q(z | x_b). Inputs of any floating dtype are computed in float64.

IWAE bound and its Monte Carlo error
    L_K = log (1/K) sum_k w_k,  w_k = exp(lw_k)            (Burda et al. 2015)
    E[L_K] <= log p(x); the bias is -Var(w) / (2 K E[w]^2) + O(K^-2).
    Leave-one-out values  L_{K-1}^(-i) = log((S - w_i) / (K - 1)),  S = sum_k w_k,
    jackknife standard error  se = sqrt((K-1)/K * sum_i (L_{K-1}^(-i) - mean_i L_{K-1}^(-i))^2).
    With weights scaled by the largest, w_max, the sum of the others is accumulated on its own, so
    log(S - w_max) never cancels (one dominating weight); every other w_i <= S / 2, so S - w_i is exact
    to a few ulps.

Jackknife variational inference (Nowozin, ICLR 2018)
    JVI_1 = K L_K - (K-1) mean_i L_{K-1}^(-i)  removes the O(1/K) bias term, leaving O(K^-2).
    JVI_1 >= L_K always (Jensen: mean_i log mean_{-i} w <= log mean w), so ``bias = JVI_1 - L_K >= 0``.
    JVI_1 is *not* a lower bound on log p(x), neither per draw nor in expectation: its remaining bias
    -c / (K (K-1)), c = mu_3 / (3 mu^3) - 3 sigma^4 / (4 mu^4) (moments of w), is positive for light-tailed
    weights, so e.g. an over-dispersed Gaussian q at K = 5 overshoots log p(x) on average; with
    heavy-tailed weights it stays below on average, but single estimates exceed log p(x) more often than
    L_K does. Use it as a point estimate with its standard error, never as a certified bound.

Importance-sampling diagnostics
    ESS = (sum w)^2 / sum w^2, in [1, K].
    k_hat: shape of a generalized Pareto distribution fitted to the tail of the weights, as in Pareto
    smoothed importance sampling (Vehtari, Simpson, Gelman, Yao, Gabry, JMLR 2024, arXiv:1507.02646):
    tail size M = min(ceil(0.2 K), ceil(3 sqrt(K))), exceedances of the M largest weights over the
    (M+1)-th largest, Zhang & Stephens (2009) empirical-Bayes fit, then the weakly informative prior
    k_hat = (M k + 10 * 0.5) / (M + 10). k_hat > 0.7: the IS estimate (and so L_K and its standard error)
    is unreliable; for k_hat >= 0.5 the weights have infinite variance and the CLT-based standard errors
    above become optimistic.

ELBO
    mean_k lw_k, with standard error std_k(lw) / sqrt(K) (sample std, ddof = 1).

Everything at once: :func:`point_estimates` (what the protocol stores per test point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

KHAT_UNRELIABLE = 0.7
JVI_SE_GROUPS = 20
_KHAT_PRIOR_STRENGTH = 10.0
_KHAT_PRIOR_SHAPE = 0.5
_KHAT_MIN_TAIL = 5


@dataclass(frozen=True)
class JackknifeResult:
    """Per-example ([B]) IWAE bound, its jackknife error, and the JVI_1 bias-corrected estimate."""

    bound: Tensor
    mc_se: Tensor
    jvi1: Tensor
    bias: Tensor
    jvi1_mc_se: Tensor


@dataclass(frozen=True)
class WeightDiagnostics:
    """Per-example ([B]) effective sample size and Pareto k_hat of the importance weights."""

    ess: Tensor
    khat: Tensor


def _as_log_weights(lw: Tensor) -> Tensor:
    """Validate [K, B] with K >= 1 and return it as float64."""
    if lw.ndim != 2 or lw.shape[0] < 1:
        raise ValueError(f"log-weights must have shape [K, B] with K >= 1, got {tuple(lw.shape)}")
    if not lw.is_floating_point():
        raise TypeError(f"log-weights must be a floating tensor, got {lw.dtype}")
    return lw.to(torch.float64)


def _finite_or_nan(value: Tensor) -> Tensor:
    return torch.where(torch.isfinite(value), value, torch.full_like(value, math.nan))


def _leave_one_out_log_sums(lw: Tensor) -> tuple[Tensor, Tensor]:
    """(log S [B], log(S - w_i) [K, B]) for lw [K, B], K >= 2, stable in log space.

    Weights are scaled by the largest one, w_max. The others' sum ``rest`` is accumulated directly, so
    log(S - w_max) = log w_max + log(rest) has no cancellation; for every other index w_i <= S / 2, so
    S - w_i = w_max (1 + rest - w_i / w_max) loses at most a few ulps.
    """
    columns = torch.arange(lw.shape[1], device=lw.device)
    log_max, top = lw.max(dim=0)
    scaled = torch.exp(lw - log_max)
    scaled[top, columns] = 0.0
    rest = scaled.sum(dim=0)
    loo = torch.log((1 + rest) - scaled).add_(log_max)
    loo[top, columns] = log_max + torch.log(rest)
    log_total = torch.where(torch.isinf(log_max), log_max, log_max + torch.log1p(rest))
    return log_total, loo


def _jvi1(lw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(L_K, jackknife se of L_K, JVI_1), each [B], for lw [K, B] with K >= 2."""
    k = lw.shape[0]
    log_total, loo = _leave_one_out_log_sums(lw)
    bound = log_total - math.log(k)
    loo_mean = loo.mean(dim=0)
    se = ((k - 1) / k * (loo - loo_mean).square_().sum(dim=0)).sqrt()
    return bound, se, k * bound - (k - 1) * (loo_mean - math.log(k - 1))


def _grouped_jackknife_se(lw: Tensor, jvi1: Tensor, groups: int) -> Tensor:
    """Delete-a-group jackknife standard error of JVI_1 [B]; lw [K, B] with K >= 3.

    The K draws are cut into G = min(K, groups) contiguous groups of sizes m_g (differing by at most one);
    theta_g is JVI_1 recomputed without group g. With h_g = K / m_g, the delete-m_g jackknife
    (Busing, Meijer & van der Leeden 1999, Statistics and Computing 9:3-8) gives
        theta_J = G theta - sum_g (1 - m_g / K) theta_g,  p_g = h_g theta - (h_g - 1) theta_g,
        var = (1/G) sum_g (p_g - theta_J)^2 / (h_g - 1),
    which for equal groups is (G-1)/G sum_g (theta_g - mean theta_g)^2, and for the sample mean is
    exactly unbiased. Cost: G passes of O(K B).
    """
    k = lw.shape[0]
    n_groups = min(k, groups)
    pieces = torch.arange(k, device=lw.device).tensor_split(n_groups)
    keep = torch.ones(k, dtype=torch.bool, device=lw.device)
    total = torch.zeros_like(jvi1)
    pseudo = []
    for piece in pieces:
        keep[piece] = False
        _, _, theta_g = _jvi1(lw[keep])
        keep[piece] = True
        h = k / len(piece)
        total += (1 - 1 / h) * theta_g
        pseudo.append((h, h * jvi1 - (h - 1) * theta_g))
    theta_j = n_groups * jvi1 - total
    var = sum((p - theta_j).square() / (h - 1) for h, p in pseudo) / n_groups
    return var.sqrt()


def iwae_jackknife(lw: Tensor, *, groups: int = JVI_SE_GROUPS) -> JackknifeResult:
    """IWAE bound L_K, its jackknife Monte Carlo standard error, and Nowozin's JVI_1, per example.

    lw: [K, B] log-weights; ``groups`` >= 2. Returns [B] float64 tensors. ``mc_se``, ``jvi1`` and ``bias``
    need K >= 2, ``jvi1_mc_se`` needs K >= 3; below that, and wherever fewer than two weights are non-zero
    (a leave-one-out sum vanishes), they are NaN.

    ``jvi1_mc_se`` is the delete-a-group jackknife over G = min(K, groups) groups of draws
    (:func:`_grouped_jackknife_se`). JVI_1 is a smooth statistic of the K i.i.d. draws, so the group
    jackknife estimates its variance consistently; for K <= groups it is the ordinary delete-one jackknife
    of JVI_1 (O(K^2), K small). The estimate has about G - 1 degrees of freedom, i.e. a relative noise of
    roughly 1 / sqrt(2 (G - 1)) ~ 16% per example at G = 20, at G times the cost of JVI_1 itself and with
    no extra memory beyond one [K, B] copy; the nested exact jackknife (leave-two-out sums) would cost
    O(K^2 B). On a Gaussian toy with bounded weights its mean matches the re-seeded spread of JVI_1 to a
    few percent for K = 5..500 (tests/core/test_diagnostics.py); like ``mc_se`` it turns optimistic when the
    weights are heavy-tailed (k_hat >= 0.5).
    """
    if groups < 2:
        raise ValueError(f"groups={groups}: the group jackknife needs at least 2 groups")
    lw = _as_log_weights(lw)
    k = lw.shape[0]
    nan = torch.full_like(lw[0], math.nan)
    if k == 1:
        return JackknifeResult(bound=lw[0].clone(), mc_se=nan, jvi1=nan, bias=nan, jvi1_mc_se=nan)
    bound, se, jvi1 = _jvi1(lw)
    jvi1_se = _grouped_jackknife_se(lw, jvi1, groups) if k >= 3 else nan
    usable = (lw > -math.inf).sum(dim=0) >= 2
    se, jvi1, jvi1_se = (torch.where(usable, _finite_or_nan(v), nan) for v in (se, jvi1, jvi1_se))
    return JackknifeResult(bound=bound, mc_se=se, jvi1=jvi1, bias=jvi1 - bound, jvi1_mc_se=jvi1_se)


def _gpd_shape_zhang_stephens(x: Tensor) -> Tensor:
    """Generalized Pareto shape [B] from exceedances x [n, B] sorted ascending (Zhang & Stephens 2009).

    With theta = -xi / sigma, the profile maximum-likelihood shape is xi(theta) = mean_i log(1 - theta x_i)
    and the profile log-likelihood is n (log(-theta / xi) - xi - 1). Average theta over the grid
    theta_j = 1 / x_(n) + (1 - sqrt(m / (j - 1/2))) / (3 x_(q)),  j = 1..m,  m = 30 + floor(sqrt(n)),
    x_(q) the first-quartile order statistic, weighted by the normalized profile likelihood; return
    xi at that theta. Columns with x_(q) = 0 (a tail of ties) have no fit and give NaN.
    """
    n = x.shape[0]
    m = 30 + math.isqrt(n)
    j = torch.arange(1, m + 1, dtype=x.dtype, device=x.device)
    x_max, x_quartile = x[-1], x[int(n / 4 + 0.5) - 1]
    ok = x_quartile > 0
    x_max, x_quartile = torch.where(ok, x_max, 1.0), torch.where(ok, x_quartile, 1.0)
    theta = 1 / x_max + (1 - (m / (j - 0.5)).sqrt())[:, None] / (3 * x_quartile)  # [m, B]
    xi = torch.log1p(-theta[:, None, :] * x[None]).mean(dim=1)  # [m, B]
    profile = n * (torch.log(-theta / xi) - xi - 1)
    theta_hat = (torch.softmax(profile, dim=0) * theta).sum(dim=0)
    xi_hat = torch.log1p(-theta_hat * x).mean(dim=0)
    return torch.where(ok, xi_hat, math.nan)


def pareto_tail_size(k: int) -> int:
    """PSIS tail length M = min(ceil(0.2 K), ceil(3 sqrt(K))) for K draws."""
    return min(math.ceil(0.2 * k), math.ceil(3 * math.sqrt(k)))


def importance_diagnostics(lw: Tensor) -> WeightDiagnostics:
    """Effective sample size and PSIS Pareto k_hat of the weights exp(lw), per example.

    lw: [K, B] log-weights. Returns [B] float64 tensors. ``khat`` is NaN when the tail is too short to
    fit (M < 5, i.e. K <= 20), when the tail weights are all tied, or when no weight is positive and
    finite; ``ess`` is NaN when no weight is positive and finite.
    """
    lw = _as_log_weights(lw)
    k = lw.shape[0]
    ess = torch.exp(2 * torch.logsumexp(lw, dim=0) - torch.logsumexp(2 * lw, dim=0))
    tail = pareto_tail_size(k)
    if tail < _KHAT_MIN_TAIL:
        return WeightDiagnostics(ess=ess, khat=torch.full_like(ess, math.nan))
    top = torch.topk(lw, tail + 1, dim=0).values.flip(0)  # ascending; top[0] is the threshold
    weights = torch.exp(top - top[-1])  # scaled by exp(-max lw)
    xi = _gpd_shape_zhang_stephens(weights[1:] - weights[0])
    khat = (tail * xi + _KHAT_PRIOR_STRENGTH * _KHAT_PRIOR_SHAPE) / (tail + _KHAT_PRIOR_STRENGTH)
    return WeightDiagnostics(ess=ess, khat=_finite_or_nan(khat))


def summarize(diag: WeightDiagnostics, worst: int = 5) -> dict[str, float | int | list[int]]:
    """Batch summary of :class:`WeightDiagnostics`.

    Keys: ``frac_khat_unreliable`` (fraction of all B examples with k_hat > KHAT_UNRELIABLE),
    ``n_khat_undefined`` (examples whose k_hat is NaN), ``median_ess`` (over examples with a defined ESS),
    ``worst_khat`` (indices of up to ``worst`` examples with the largest defined k_hat, largest first).
    """
    khat, ess = diag.khat, diag.ess
    defined = ~torch.isnan(khat)
    order = torch.argsort(torch.where(defined, khat, -math.inf), descending=True, stable=True)
    n_worst = min(worst, int(defined.sum()))
    ess_defined = ess[~torch.isnan(ess)]
    return {
        "frac_khat_unreliable": float((khat > KHAT_UNRELIABLE).double().mean()) if khat.numel() else math.nan,
        "n_khat_undefined": int((~defined).sum()),
        "median_ess": float(ess_defined.quantile(0.5)) if ess_defined.numel() else math.nan,
        "worst_khat": order[:n_worst].tolist(),
    }


def elbo_from_weights(lw: Tensor) -> tuple[Tensor, Tensor]:
    """(ELBO estimate, its Monte Carlo standard error), each [B]: mean_k lw and std_k(lw, ddof=1) / sqrt(K).

    lw: [K, B] log-weights. The standard error is NaN for K = 1.
    """
    lw = _as_log_weights(lw)
    k = lw.shape[0]
    elbo = lw.mean(dim=0)
    if k == 1:
        return elbo, torch.full_like(elbo, math.nan)
    return elbo, lw.std(dim=0, correction=1) / math.sqrt(k)


@dataclass(frozen=True)
class PointEstimates:
    """What one set of K log-weights per example says, per example.

    ``bounds`` [len(ks), B]: L_m for each m of the ladder, L_K itself and, for m < K, the average of L_m over
    the K/m disjoint groups of m consecutive draws (unbiased for E L_m, less noisy than one group).
    ``bounds_var`` [len(ks), B]: their Monte Carlo variances: the jackknife variance of L_K
    (:func:`iwae_jackknife`), and for m < K the sample variance of the K/m group bounds over K/m.
    ``jvi``, ``jvi_mc_se``: JVI_1 and its group-jackknife standard error; ``elbo``, ``elbo_mc_se``: mean_k lw
    and its standard error (:func:`elbo_from_weights`); ``ess``, ``khat``: :func:`importance_diagnostics`.
    All [B] float64 unless stated.
    """

    bounds: Tensor
    bounds_var: Tensor
    jvi: Tensor
    jvi_mc_se: Tensor
    elbo: Tensor
    elbo_mc_se: Tensor
    ess: Tensor
    khat: Tensor


def point_estimates(lw: Tensor, ks: tuple[int, ...]) -> PointEstimates:
    """:class:`PointEstimates` of lw [K, B] for the ladder ``ks`` (K = max(ks) = lw.shape[0]; every m divides K)."""
    lw = _as_log_weights(lw)
    k = lw.shape[0]
    if max(ks) != k or any(k % m for m in ks):
        raise ValueError(f"the ladder {ks} must end at K = {k} and every k in it divide K")
    jack = iwae_jackknife(lw)
    bounds, variances = [], []
    for m in ks:
        if m == k:
            bounds.append(jack.bound)
            variances.append(jack.mc_se.square())
            continue
        groups = k // m
        per_group = torch.logsumexp(lw.reshape(groups, m, -1), dim=1) - math.log(m)
        bounds.append(per_group.mean(dim=0))
        variances.append(per_group.var(dim=0, correction=1) / groups)
    elbo, elbo_se = elbo_from_weights(lw)
    diag = importance_diagnostics(lw)
    return PointEstimates(
        bounds=torch.stack(bounds),
        bounds_var=torch.stack(variances),
        jvi=jack.jvi1,
        jvi_mc_se=jack.jvi1_mc_se,
        elbo=elbo,
        elbo_mc_se=elbo_se,
        ess=diag.ess,
        khat=diag.khat,
    )
