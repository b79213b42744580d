"""The protocol run: per-example values do not depend on the batch size beyond float32 rounding."""

import torch

from vaebench.protocol import registry
from vaebench.protocol.datasets import load_dataset
from vaebench.protocol.evaluate import evaluate
from vaebench.protocol.settings import Settings


def builtin(name: str) -> registry.Entry:
    return registry.load_registry([registry.builtin_registry()])[name]


def test_per_example_values_agree_across_batch_sizes_within_float32_rounding():
    """Each example's noise is keyed by its test index, so the batch size changes only the order of float32
    operations: batched matrix products accumulate in another order. L_K combines the K log-weights with
    logsumexp/logaddexp in float64, whose result moves by at most the largest change of one log-weight (a
    softmax-weighted average of the changes), so K does not enter. One log-weight (and the ELBO) is a float32
    sum over D = 64 pixels of terms of one sign, after layers whose dot products have at most D = 64 terms; the
    standard bound for a float32 sum of n terms is n * eps * sum |terms|, and sum |terms| is about |value|
    here. Hence |difference| <= D * eps_float32 * |value|: 1.4e-4 nats at |value| = 18. Measured (all 300
    test points, K = 500, batch sizes 1, 7 and 100): at most 4.8e-6 for L_K and 7.6e-6 for the ELBO, four
    float32 ulps of values between 16 and 32."""
    entry = builtin("digits-vampprior")
    model, data = registry.load(entry), load_dataset(entry.dataset)
    per = {b: evaluate(model, data, Settings(k=500, n_test=50, batch_size=b), surgery=False)[1] for b in (1, 7, 50)}
    eps, dim = torch.finfo(torch.float32).eps, entry.model.x_dim
    for key in ("L_500", "elbo"):
        reference = per[50][key].double()
        bound = dim * eps * reference.abs()
        for b in (1, 7):
            difference = (per[b][key].double() - reference).abs()
            assert torch.equal(per[b]["test_index"], per[50]["test_index"])
            assert (difference <= bound).all(), (key, b, float(difference.max()), float(bound.min()))


def test_record_summarises_the_per_example_estimates():
    """The record's new numbers (protocol 2) are the per-example ones combined as documented: the MC error of a
    mean of independent points is sqrt(sum se^2) / N, JVI_1 >= L_K at every point (Jensen), the bias is their
    mean difference, the k-hat fraction, median ESS and worst points are those of the per-example column."""
    import math

    from vaebench.core.diagnostics import KHAT_UNRELIABLE
    from vaebench.protocol.evaluate import PER_POINT

    entry = builtin("digits-standard")
    model, data = registry.load(entry), load_dataset(entry.dataset)
    record, per = evaluate(model, data, Settings(k=500, n_test=40), surgery=False)
    assert set(per) == {"test_index", "L_500", "L_500_mc_se", *PER_POINT}
    n = 40
    assert record.log_likelihood == float(per["L_500"].mean())
    assert math.isclose(record.log_likelihood_mc_se, float(per["L_500_mc_se"].square().sum().sqrt()) / n)
    assert record.bounds_mc_se[500] == record.log_likelihood_mc_se
    assert math.isclose(record.elbo, float(per["elbo"].mean()))
    assert math.isclose(record.elbo_mc_se, float(per["elbo_mc_se"].square().sum().sqrt()) / n)
    assert (per["jvi"] >= per["L_500"]).all()
    assert math.isclose(record.log_likelihood_bias, float((per["jvi"] - per["L_500"]).mean()), abs_tol=1e-12)
    assert record.khat_unreliable == float((per["khat"] > KHAT_UNRELIABLE).double().mean())
    assert math.isclose(record.median_ess, float(per["ess"].quantile(0.5)))
    assert ((per["ess"] >= 1) & (per["ess"] <= 500)).all()
    worst = [item.split(":") for item in record.worst_khat.split()]
    assert [int(i) for i, _ in worst] == per["test_index"][per["khat"].argsort(descending=True)[:5]].tolist()
    assert [float(k) for _, k in worst] == [round(float(k), 2) for k in per["khat"].sort(descending=True).values[:5]]
    # the MC errors are of the right size: the all-K ELBO's is far below the spread of single log-weights
    assert record.elbo_mc_se < record.elbo_se
