"""Posterior diagnostics: active units, ELBO surgery, and samples of the IWAE posterior q_EW."""

from __future__ import annotations

import math

import torch
from torch.distributions import Independent, Normal
from tqdm import tqdm

from vaebench.core.estimators import elbo_terms, weighted_samples
from vaebench.core.interface import check_model
from vaebench.core.mixture import mixture_log_prob


@torch.no_grad()
def posterior_means(model, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """E_q(z|x)[z] for every row of x: [N, d]."""
    return torch.cat([model.posterior(x[i : i + batch_size]).mean for i in range(0, len(x), batch_size)])


def active_units(
    model, x: torch.Tensor, threshold: float = 0.01, batch_size: int = 1000
) -> tuple[int | list[int], torch.Tensor]:
    """Active units (Burda et al. 2015): A_u = Var_x(E_q(z|x)[z_u]) over the rows of x.

    The variance is the population variance (divide by N) over the given points; unit u is
    active when A_u > threshold (strictly). Returns (count, A [d]); for a model with
    ``latent_layers`` the count is a list, one per layer, in the order of ``latent_layers``.
    """
    check_model(model)
    variances = posterior_means(model, x, batch_size).var(dim=0, correction=0)
    active = variances > threshold
    layers = getattr(model, "latent_layers", None)
    if layers is None:
        return int(active.sum()), variances
    return [int(part.sum()) for part in active.split(list(layers))], variances


class NotGaussianPosterior(TypeError):
    """ELBO surgery needs q(z|x) = Independent(Normal(loc, scale), 1)."""


def _gaussian_params(q) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(q, Independent) and isinstance(q.base_dist, Normal)):
        raise NotGaussianPosterior(
            "elbo_surgery needs a diagonal Gaussian posterior Independent(Normal(loc, scale), 1) "
            f"to evaluate the aggregate posterior exactly; got {type(q).__name__}"
        )
    return q.base_dist.loc, q.base_dist.scale


@torch.no_grad()
def elbo_surgery(
    model, x_train: torch.Tensor, n_samples: int | None = None, seed: int = 0, batch_size: int = 1000
) -> dict[str, float]:
    """ELBO surgery (Hoffman & Johnson 2016) over the N rows of ``x_train``, nats per data point.

    avg_kl = (1/N) sum_i KL(q(z|x_i) || p(z)) = mutual_info + marginal_kl, where
    q(z) = (1/N) sum_i q(z|x_i) is the aggregate posterior over all N points (evaluated exactly as
    an N-component mixture, never a minibatch),
    mutual_info = E_i E_q(z|x_i)[log q(z|x_i) - log q(z)], in [0, log N], and
    marginal_kl = E_q(z)[log q(z) - log p(z)].
    ``avg_kl`` and ``reconstruction`` use every point; the two expectations over q(z) use
    ``n_samples`` draws (default N: one per point), z = a draw of q(z|x_i) with i uniform.
    Also returns ``train_elbo`` = reconstruction - avg_kl and the standard errors of the MC terms
    (``mc_avg_kl_se`` is that of mutual_info + marginal_kl, the MC estimate of avg_kl).
    """
    check_model(model)
    n = len(x_train)
    locs, scales, recs, kls = [], [], [], []
    for i in range(0, n, batch_size):
        xb = x_train[i : i + batch_size]
        loc, scale = _gaussian_params(model.posterior(xb))
        locs.append(loc)
        scales.append(scale)
        rec, kl = elbo_terms(model, xb, seed=seed, index=torch.arange(i, i + len(xb)))
        recs.append(rec)
        kls.append(kl)
    loc, scale = torch.cat(locs), torch.cat(scales)
    loc64, scale64 = loc.double(), scale.double()
    prior = model.prior()
    gen = torch.Generator().manual_seed(seed)
    m = n if n_samples is None else n_samples
    rows = torch.arange(n) if m == n else torch.randint(n, (m,), generator=gen)
    mi_terms, marginal_terms = [], []
    for i in tqdm(
        range(0, m, batch_size), desc="ELBO surgery: q(z) over all training points", unit="batch", disable=None
    ):
        r = rows[i : i + batch_size].to(loc.device)
        eps = torch.randn(len(r), loc.shape[1], generator=gen).to(loc)
        z = loc[r] + scale[r] * eps
        log_q_cond = Independent(Normal(loc[r], scale[r]), 1).log_prob(z)
        log_q_agg = mixture_log_prob(z.double(), loc64, scale64)  # float64: the expansion cancels at small scales
        mi_terms.append(log_q_cond.double() - log_q_agg)
        marginal_terms.append(log_q_agg - prior.log_prob(z).double())
    mi, marginal = torch.cat(mi_terms).double(), torch.cat(marginal_terms).double()
    rec, kl = torch.cat(recs).double(), torch.cat(kls).double()
    return {
        "reconstruction": float(rec.mean()),
        "avg_kl": float(kl.mean()),
        "mutual_info": float(mi.mean()),
        "marginal_kl": float(marginal.mean()),
        "train_elbo": float((rec - kl).mean()),
        "mutual_info_se": float(mi.std() / math.sqrt(m)),
        "marginal_kl_se": float(marginal.std() / math.sqrt(m)),
        "mc_avg_kl_se": float((mi + marginal).std() / math.sqrt(m)),
        "log_n": math.log(n),
        "n_train": n,
        "surgery_samples": m,
    }


@torch.no_grad()
def qew_samples(model, x: torch.Tensor, k: int, n: int, seed: int = 0) -> torch.Tensor:
    """n samples per example from q_EW(z|x) (Cremer et al. 2017) by importance resampling: [n, B, d].

    Each sample draws k candidates z_1..z_k ~ q(z|x), weights w_j = p(x, z_j) / q(z_j|x), and
    returns z_j with probability w_j / sum_i w_i. k = 1 gives q itself; k -> infinity, p(z|x).
    """
    check_model(model)
    if k < 1 or n < 1:
        raise ValueError(f"k={k}, n={n}: both must be at least 1")
    gen = torch.Generator().manual_seed(seed)
    q, prior = model.posterior(x), model.prior()
    out = []
    for draw in range(n):
        z, lw = weighted_samples(model, x, k, seed=seed, start=draw * k, q=q, prior=prior)  # [k, B, d], [k, B]
        j = torch.multinomial(torch.softmax(lw.T.double(), dim=1).cpu(), 1, generator=gen).squeeze(1)
        out.append(z[j.to(z.device), torch.arange(z.shape[1], device=z.device)])
    return torch.stack(out)
