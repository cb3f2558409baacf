"""The paired significance test (hyper_retrieval/evaluation/significance.py) against values computed by hand and
against the t-test it approximates on many queries."""

import numpy as np
import pytest
from scipy import stats

from hyper_retrieval.evaluation.significance import (
    paired_test,
    query_differences,
    seed_test,
    significance_markdown,
)


def test_exact_sign_flips_on_a_hand_made_case():
    # 4 positive differences: of the 16 sign assignments only all-plus and all-minus reach |mean| 0.35
    test = paired_test({"c": np.array([0.5, 0.3, 0.2, 0.4])})
    assert test.exact and test.queries == 4
    assert test.difference == pytest.approx(0.35)
    assert test.p_value == pytest.approx(2 / 16)
    assert 0.2 <= test.low <= 0.35 <= test.high <= 0.5
    # sums of +-0.2 +-0.1 +-0.3: 0.6, 0.4, -0.4, -0.6 reach the observed 0.4, 4 of 8
    assert paired_test({"c": np.array([0.2, -0.1, 0.3])}).p_value == pytest.approx(4 / 8)


def test_collections_weigh_equally_whatever_their_size():
    # one query of +1 in x, three of 0 in y: the mean of collection means is 0.5 (not 0.25 over queries), and
    # every sign assignment gives +-0.5, so p is 1
    test = paired_test({"x": np.array([1.0]), "y": np.zeros(3)})
    assert test.difference == pytest.approx(0.5) and test.p_value == pytest.approx(1.0)
    assert test.low == pytest.approx(0.5) and test.high == pytest.approx(0.5)  # nothing varies when resampled


def test_random_resamples_agree_with_the_t_test_on_many_queries():
    rng = np.random.default_rng(7)
    for shift in (0.0, 0.02, 0.05):
        d = rng.normal(shift, 0.3, 1500)
        test = paired_test({"c": d}, resamples=20_000)
        assert not test.exact
        assert test.p_value == pytest.approx(stats.ttest_1samp(d, 0).pvalue, abs=0.015)
        half_width = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
        assert test.low == pytest.approx(d.mean() - half_width, abs=0.003)
        assert test.high == pytest.approx(d.mean() + half_width, abs=0.003)


def test_seeds_are_averaged_per_query_and_must_cover_the_same_queries():
    a = [{"c": {"q1": {"m": 1.0}, "q2": {"m": 0.5}}}, {"c": {"q1": {"m": 0.0}, "q2": {"m": 0.5}}}]
    b = [{"c": {"q1": {"m": 0.25}, "q2": {"m": 0.0}}}, {"c": {"q1": {"m": 0.25}, "q2": {"m": 1.0}}}]
    np.testing.assert_allclose(query_differences(a, b, ["c"], "m")["c"], [0.25, 0.0])
    with pytest.raises(ValueError, match="different queries"):
        query_differences(a, [{"c": {"q1": {"m": 0.0}}}] * 2, ["c"], "m")
    with pytest.raises(ValueError, match="missing"):
        query_differences(a, b, ["other"], "m")
    with pytest.raises(ValueError, match="paired seeds"):
        query_differences(a, b[:1], ["c"], "m")


def test_the_markdown_table_names_each_group():
    results = {"collections": {"c": {"zero_shot": False}, "z": {"zero_shot": True}}}
    base = {"c": {"q1": {"m": 0.0}, "q2": {"m": 0.0}}, "z": {"q1": {"m": 0.5}}}
    other = {"c": {"q1": {"m": 0.5}, "q2": {"m": 0.0}}, "z": {"q1": {"m": 0.5}}}
    table = significance_markdown({"base": (results, base), "other": (results, other)}, "m")
    # in-domain: d = (0.5, 0); every sign assignment gives |0.25|, so p is 1
    assert "| other | in-domain | +25.00 | [+0.00, +50.00] | 1.0000 | 2 |" in table
    assert "| other | zero-shot | +0.00 |" in table and "| other | all | +12.50 |" in table


def test_a_p_value_is_never_printed_as_zero():
    from hyper_retrieval.evaluation.significance import format_p

    assert (format_p(0.0181), format_p(0.0002), format_p(0.0001), format_p(3e-5)) == (
        "0.0181", "0.0002", "0.0001", "< 0.0001")


def test_the_seed_test_on_a_hand_made_case():
    # per-seed differences 1, 2, 3: mean 2, sample std 1, standard error 1/sqrt(3), t = 2 sqrt(3) on 2 degrees of
    # freedom, where the t distribution's tail is closed-form: P(T > t) = (1 - t / sqrt(t^2 + 2)) / 2
    test = seed_test([1.0, 2.0, 3.0])
    t = 2 * np.sqrt(3)
    assert test.difference == pytest.approx(2.0)
    assert test.p_value == pytest.approx(1 - t / np.sqrt(t**2 + 2))  # two-sided: 0.0742
    # the 97.5% quantile q solves (1 - q / sqrt(q^2 + 2)) / 2 = 0.025: q^2 = 2 * 0.95^2 / (1 - 0.95^2)
    half = np.sqrt(2 * 0.95**2 / (1 - 0.95**2)) / np.sqrt(3)
    assert (test.low, test.high) == pytest.approx((2 - half, 2 + half))
    assert test.seeds == 3


def test_the_seed_test_needs_two_seeds_and_takes_no_spread_as_certain():
    assert seed_test([0.4]) is None
    same = seed_test([0.5, 0.5])
    assert (same.difference, same.low, same.high, same.p_value) == (0.5, 0.5, 0.5, 0.0)
    assert seed_test([0.0, 0.0]).p_value == 1.0
    # two seeds that disagree in sign: no evidence either way
    assert seed_test([0.45, -0.46]).p_value > 0.9
