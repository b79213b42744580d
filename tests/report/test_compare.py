"""``vaebench compare``: paired differences over shared test points, their standard errors, verdicts and errors."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from vaebench import cli
from vaebench.protocol.record import Record
from vaebench.protocol.results import ResultsError, save_record
from vaebench.report.compare import DIFFERS, SAME, Z95, compare_models, paired_difference, write_comparison


def make_record(
    name: str,
    dataset: str = "digits",
    n_test: int = 50,
    k: int = 100,
    ll: float = -20.0,
    elbo: float = -21.0,
    **changes,
) -> Record:
    """A record with plausible numbers (only what the report reads matters)."""
    fields = dict(
        model=name,
        dataset=dataset,
        n_test=n_test,
        k=k,
        seed=0,
        log_likelihood=ll,
        log_likelihood_se=0.1,
        elbo=elbo,
        elbo_se=0.1,
        elbo_gap=ll - elbo,
        elbo_gap_se=0.05,
        log_likelihood_mc_se=0.01,
        bounds={1: elbo, k: ll},
        bounds_mc_se={1: 0.02, k: 0.01},
        active_units=3,
        active_units_total=3,
        active_units_set="test",
        surgery=None,
        surgery_note="",
        device="cpu",
        backend="torch",
        torch="2",
        protocol_version=1,
        wall_time_s=1.0,
    )
    fields.update(changes)
    return Record(**fields)


def store(out, name: str, index, bound, elbo, dataset: str = "digits", k: int = 100, **changes) -> Record:
    """Store a record and its per-example file (values rounded to the 6 decimals the file keeps)."""
    index = np.asarray(index)
    bound, elbo = np.round(np.asarray(bound, dtype=float), 6), np.round(np.asarray(elbo, dtype=float), 6)
    record = make_record(
        name, dataset, n_test=len(index), k=k, ll=float(bound.mean()), elbo=float(elbo.mean()), **changes
    )
    save_record(
        out,
        name,
        {},
        record,
        {"test_index": torch.from_numpy(index), f"L_{k}": torch.from_numpy(bound), "elbo": torch.from_numpy(elbo)},
    )
    return record


def row(table: pd.DataFrame, a: str, b: str, quantity: str) -> pd.Series:
    hits = table[(table["A"] == a) & (table["B"] == b) & (table["quantity"] == quantity)]
    assert len(hits) == 1
    return hits.iloc[0]


def test_paired_standard_error_equals_a_direct_numpy_computation(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.normal(-20, 5, 300)  # a large spread across test points, shared by both models
    ia, ib = np.arange(0, 250), np.arange(50, 300)  # 200 shared points
    la = base[ia] + 0.3 + rng.normal(0, 0.2, len(ia))
    lb = base[ib] + rng.normal(0, 0.2, len(ib))
    ea, eb = la - rng.gamma(2, 0.5, len(ia)), lb - rng.gamma(2, 0.3, len(ib))
    store(tmp_path, "a", ia, la, ea)
    store(tmp_path, "b", ib, lb, eb)
    table = compare_models(tmp_path, ["a", "b"])
    assert list(table["quantity"]) == ["log p(x)", "ELBO", "gap"]
    fa = pd.DataFrame({"L": np.round(la, 6), "e": np.round(ea, 6)}, index=ia)
    fb = pd.DataFrame({"L": np.round(lb, 6), "e": np.round(eb, 6)}, index=ib)
    shared = np.intersect1d(ia, ib)
    for quantity, da in (
        ("log p(x)", fa.loc[shared, "L"].to_numpy() - fb.loc[shared, "L"].to_numpy()),
        ("ELBO", fa.loc[shared, "e"].to_numpy() - fb.loc[shared, "e"].to_numpy()),
        (
            "gap",
            (fa.loc[shared, "L"] - fa.loc[shared, "e"]).to_numpy()
            - (fb.loc[shared, "L"] - fb.loc[shared, "e"]).to_numpy(),
        ),
    ):
        got = row(table, "a", "b", quantity)
        se = np.std(da, ddof=1) / np.sqrt(len(da))
        assert got["shared points"] == 200
        assert got["mean A − B (nats)"] == pytest.approx(da.mean(), abs=1e-9)
        assert got["s.e. (nats)"] == pytest.approx(se, rel=1e-9)
        assert got["95% low"] == pytest.approx(da.mean() - 1.959964 * se, rel=1e-6)
        assert got["95% high"] == pytest.approx(da.mean() + 1.959964 * se, rel=1e-6)
    # the paired s.e. is far below the unpaired one: the spread of the images cancels
    assert row(table, "a", "b", "log p(x)")["s.e. (nats)"] < 0.1 * np.std(la) / np.sqrt(200)
    assert any("compared on the 200 points they share" in n for n in table.attrs["notes"])


@pytest.mark.parametrize(("z", "verdict"), [(1.95, SAME), (1.97, DIFFERS), (-1.95, SAME), (-1.97, DIFFERS)])
def test_verdict_flips_at_the_95_percent_boundary(tmp_path, z, verdict):
    n = 400
    rng = np.random.default_rng(1)
    base = rng.normal(-20, 3, n)
    noise = rng.normal(size=n)
    noise = (noise - noise.mean()) / noise.std(ddof=1)  # mean 0, sd 1 exactly: s.e. = sd / sqrt(n)
    sd = 2.0
    se = sd / math.sqrt(n)
    diff = z * se + sd * noise
    store(tmp_path, "a", range(n), base + diff, base - 1)
    store(tmp_path, "b", range(n), base, base - 1)
    got = row(compare_models(tmp_path, ["a", "b"]), "a", "b", "log p(x)")
    assert got["mean A − B (nats)"] / got["s.e. (nats)"] == pytest.approx(z, abs=1e-4)
    assert got["verdict"] == verdict
    assert Z95 == pytest.approx(1.959964, abs=1e-6)


def test_paired_difference_of_identical_models_does_not_differ():
    a = pd.Series([1.0, 2.0, 3.0])
    d = paired_difference(a, a)
    assert d["mean A − B (nats)"] == 0 and d["s.e. (nats)"] == 0 and d["verdict"] == SAME
    assert paired_difference(a, a + 1e-3)["verdict"] == DIFFERS  # a constant shift, no spread: resolved
    assert paired_difference(a.iloc[:1], a.iloc[:1] + 1)["verdict"].startswith("unknown")


def test_all_pairs_in_the_order_given_and_the_files_written(tmp_path):
    for i, name in enumerate(("m1", "m2", "m3")):
        store(tmp_path, name, range(30), np.linspace(-25, -15, 30) + i, np.linspace(-26, -16, 30) + i)
    table = compare_models(tmp_path, ["m3", "m1", "m2"])
    assert list(dict.fromkeys(zip(table["A"], table["B"]))) == [("m3", "m1"), ("m3", "m2"), ("m1", "m2")]
    assert row(table, "m3", "m1", "log p(x)")["mean A − B (nats)"] == pytest.approx(2.0)
    paths = write_comparison(tmp_path, table)
    assert [p.name for p in paths] == ["m3_vs_m1_vs_m2.csv", "m3_vs_m1_vs_m2.png"]
    assert all(p.parent == tmp_path / "compare" and p.stat().st_size > 0 for p in paths)
    written = pd.read_csv(paths[0])
    assert list(written.columns[:9]) == list(table.columns) and set(written["K of A"]) == {100}
    assert written["verdict"].iloc[0] == DIFFERS


def test_fewer_than_two_models_or_a_name_twice(tmp_path):
    store(tmp_path, "a", range(5), np.arange(5.0), np.arange(5.0) - 1)
    with pytest.raises(ResultsError, match="two or more models; got 1: a"):
        compare_models(tmp_path, ["a"])
    with pytest.raises(ResultsError, match="two or more models; got 0"):
        compare_models(tmp_path, [])
    with pytest.raises(ResultsError, match="a given twice"):
        compare_models(tmp_path, ["a", "a"])


def test_an_unknown_or_unevaluated_model(tmp_path):
    store(tmp_path, "vae-vampprior", range(5), np.arange(5.0), np.arange(5.0) - 1)
    with pytest.raises(ResultsError, match=r"'vae-vampprio' has no stored results .*did you mean vae-vampprior\?"):
        compare_models(tmp_path, ["vae-vampprior", "vae-vampprio"])
    with pytest.raises(ResultsError, match=r"'other' has no stored results .*evaluated there: vae-vampprior"):
        compare_models(tmp_path, ["other", "vae-vampprior"])


def test_models_of_different_datasets_name_the_datasets(tmp_path):
    store(tmp_path, "a", range(5), np.arange(5.0), np.arange(5.0) - 1, dataset="digits")
    store(tmp_path, "b", range(5), np.arange(5.0), np.arange(5.0) - 1, dataset="digits")
    store(tmp_path, "c", range(5), np.arange(5.0), np.arange(5.0) - 1, dataset="binarized-mnist")
    with pytest.raises(ResultsError, match="different datasets .*a, b on digits; c on binarized-mnist"):
        compare_models(tmp_path, ["a", "b", "c"])


def test_no_shared_test_points_says_which_points_each_has(tmp_path):
    store(tmp_path, "a", range(0, 300), np.zeros(300), np.zeros(300) - 1)
    store(tmp_path, "b", range(1000, 1200), np.zeros(200), np.zeros(200) - 1)
    with pytest.raises(
        ResultsError,
        match=r"a and b share no test points \(a: 300 points, indices 0\.\.299; "
        r"b: 200 points, indices 1000\.\.1199\)",
    ):
        compare_models(tmp_path, ["a", "b"])


def test_a_different_k_is_compared_and_said(tmp_path):
    store(tmp_path, "a", range(20), np.linspace(-21, -19, 20), np.linspace(-22, -20, 20), k=100)
    store(tmp_path, "b", range(20), np.linspace(-21, -19, 20) - 0.5, np.linspace(-22, -20, 20), k=5000)
    table = compare_models(tmp_path, ["a", "b"])
    assert row(table, "a", "b", "log p(x)")["mean A − B (nats)"] == pytest.approx(0.5)
    assert any(n.startswith("different K: a K = 100, b K = 5000") for n in table.attrs["notes"])


def test_cli_compare_prints_the_table_and_notes_and_exits_2_on_errors(tmp_path, capsys):
    store(tmp_path, "a", range(10), np.linspace(-21, -19, 10), np.linspace(-22, -20, 10), k=100)
    store(tmp_path, "b", range(5, 15), np.linspace(-21, -19, 10), np.linspace(-22, -20, 10), k=50)
    assert cli.main(["compare", "a", "b", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "paired differences A − B on digits" in printed and "log p(x)" in printed
    assert "note: different K" in printed and "compared on the 5 points they share" in printed
    assert f"wrote {tmp_path / 'compare' / 'a_vs_b.csv'}" in printed
    assert cli.main(["compare", "a", "--out", str(tmp_path)]) == 2
    assert "error: compare needs two or more models" in capsys.readouterr().err
