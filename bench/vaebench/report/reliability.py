"""How far L_K can be trusted, per model: its Monte Carlo error, its estimated bias, the importance weights' tails."""

from __future__ import annotations

import pandas as pd

from vaebench.report.format import fmt, fmt_se, missing, ordered_datasets

NOTE = (
    "From each test point's K draws (`vaebench.core.diagnostics`). MC s.e.: the Monte Carlo standard error of the "
    "test-set mean for these test points, from the jackknife over each point's K draws (pooled as variances; it "
    "matches the spread of 100 re-seeded evaluations within 20% on PPCA and on vae-standard, "
    "`tests/protocol/test_uncertainty.py`). JVI_1 (Nowozin 2018): L_K with its O(1/K) bias removed; it is an "
    "estimate, not a lower bound, and can overshoot log p(x). Bias of L_K: JVI_1 − L_K. ELBO: the mean log-weight of "
    "all K draws. k-hat: the Pareto shape of the largest importance weights (PSIS, Vehtari et al.); above 0.7 a "
    "point's L_K and its error are not to be trusted (the weights' variance is infinite from 0.5, and the standard "
    "error then tends to be small most of the time and large now and then). ESS: (Σw)² / Σw², of K. Worst points: "
    "test index:k-hat."
)


def reliability_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per record that has the diagnostics (protocol version 2 on), by dataset, best log p(x) first."""
    if "log_likelihood_jvi" not in records:
        return pd.DataFrame()
    rows = []
    for dataset in ordered_datasets(records["dataset"]):
        part = records[(records["dataset"] == dataset) & records["log_likelihood_jvi"].notna()]
        for r in part.sort_values(["log_likelihood", "model"], ascending=[False, True]).itertuples(index=False):
            rows.append(
                {
                    "model": r.model,
                    "dataset": dataset,
                    "K": r.k,
                    "L_K ± MC s.e.": fmt_se(r.log_likelihood, r.log_likelihood_mc_se, 3),
                    "JVI_1 ± MC s.e.": fmt_se(r.log_likelihood_jvi, r.log_likelihood_jvi_mc_se, 3),
                    "bias of L_K": fmt(r.log_likelihood_bias, 3),
                    "ELBO (all K) ± MC s.e.": fmt_se(r.elbo, r.elbo_mc_se, 3),
                    "k-hat > 0.7": "" if missing(r.khat_unreliable) else f"{100 * r.khat_unreliable:.1f}%",
                    "median ESS": fmt(r.median_ess, 1),
                    "worst points": r.worst_khat if isinstance(r.worst_khat, str) else "",
                }
            )
    return pd.DataFrame(rows)
