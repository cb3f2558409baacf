"""Is a difference between two systems real? A paired test over queries, stratified by collection.

The statistic is what the tables report: the difference of two systems' group averages, where a group average is the
unweighted mean over collections of each collection's mean per-query metric. Both tests resample queries within their
collection, so each collection keeps its weight:

- p-value: the paired randomization (sign-flip) test, scipy.stats.permutation_test. Under "no difference" each
  query's difference is as likely negative as positive; p is twice the smaller share of sign assignments whose
  statistic lies at or beyond the observed one (the null is symmetric, so this is the share at least as large in
  size): all 2^n assignments when there are few queries, else ``resamples`` random ones counted with the observed
  one, so that the smallest p of 10,000 resamples is 2 / 10,001.
- 95% interval: the paired bootstrap, scipy.stats.bootstrap: queries drawn with replacement within each collection,
  the percentile interval of the resampled statistic.

Several seeds of each system are pooled per query: a query's difference is the mean over seeds of system A's value
minus the mean over seeds of system B's (the seeds matched by position), so the test is over queries and the seed
noise is averaged, not tested. :func:`seed_test` tests it: each seed's difference of the averages is one observation
(scipy's one-sample t-test and t interval over seeds), which asks whether the gain survives another seed, not only
another draw of queries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

PerQuery = Mapping[str, Mapping[str, Mapping[str, float]]]  # collection -> query id -> metric -> value


@dataclass(frozen=True)
class PairedTest:
    """The outcome of :func:`paired_test`: A minus B."""

    difference: float  # the observed difference of the group averages
    low: float  # 95% bootstrap interval
    high: float
    p_value: float  # two-sided, paired randomization test
    queries: int  # paired queries in the group
    exact: bool  # p from every sign assignment (else from random ones)


@dataclass(frozen=True)
class SeedTest:
    """The outcome of :func:`seed_test`: A minus B, one observation per seed."""

    difference: float  # the mean of the per-seed differences
    low: float  # 95% t interval
    high: float
    p_value: float  # two-sided one-sample t-test against 0
    seeds: int


def seed_test(per_seed: Sequence[float]) -> SeedTest | None:
    """scipy's one-sample t-test and 95% t interval of the mean of per-seed differences (A minus B, each seed's group
    average); None with fewer than two seeds (no spread to test against)."""
    values = np.asarray(per_seed, dtype=np.float64)
    if len(values) < 2:
        return None
    mean = float(values.mean())
    if np.all(values == values[0]):  # every seed gives the same difference: no spread, no t
        return SeedTest(mean, mean, mean, float(mean == 0), len(values))
    test = stats.ttest_1samp(values, 0.0)
    interval = test.confidence_interval(0.95)
    return SeedTest(mean, float(interval.low), float(interval.high), float(test.pvalue), len(values))


def query_differences(a: Sequence[PerQuery], b: Sequence[PerQuery], collections: Sequence[str], metric: str
                      ) -> dict[str, np.ndarray]:
    """Per collection, each query's metric in A minus in B, each averaged over the seeds given (A's i-th per-query
    table paired with B's i-th). Raises ValueError when a collection or a query is missing on one side."""
    if not a or len(a) != len(b):
        raise ValueError(f"paired seeds: {len(a)} per-query tables for A, {len(b)} for B (need the same, >= 1)")
    differences = {}
    for name in collections:
        tables = [t.get(name) for t in (*a, *b)]
        if any(t is None for t in tables):
            raise ValueError(f"collection {name!r} is missing from a per-query table")
        ids = sorted(tables[0])
        for table in tables[1:]:
            if set(table) != set(ids):
                missing = sorted(set(ids) ^ set(table))[:3]
                raise ValueError(f"collection {name!r}: the systems were scored on different queries "
                                 f"(e.g. {missing})")
        values = np.array([[t[q][metric] for q in ids] for t in tables], dtype=np.float64)  # (2 * seeds, queries)
        differences[name] = values[: len(a)].mean(axis=0) - values[len(a) :].mean(axis=0)
    return differences


def paired_test(differences: Mapping[str, np.ndarray], resamples: int = 10_000, seed: int = 0) -> PairedTest:
    """The randomization p-value and bootstrap interval of the mean over collections of the mean per-query
    difference (see the module's docstring), both by scipy.stats. ``differences``: collection -> (queries,)
    differences, A minus B."""
    parts = [np.asarray(d, dtype=np.float64) for d in differences.values()]
    if not parts or any(len(d) == 0 for d in parts):
        raise ValueError("paired_test needs at least one query in every collection")
    observed = float(np.mean([d.mean() for d in parts]))
    # the statistic is a weighted sum of the queries' differences (1 / (collections x its queries) each), and a sign
    # flip moves one query's term alone: one sample of weighted differences, flipped query by query
    weighted = np.concatenate([d / (len(parts) * len(d)) for d in parts])
    n = len(weighted)
    exact = 2**n <= resamples  # scipy enumerates every sign assignment then
    p_value = 1.0 if n == 1 else float(stats.permutation_test(  # one query: its two signs are equally extreme
        (weighted,), lambda x, axis: x.sum(axis=axis), vectorized=True, permutation_type="samples",
        n_resamples=resamples, rng=seed).pvalue)
    # each collection resampled on its own (scipy resamples the samples of a multi-sample statistic independently);
    # a one-query collection resamples to itself, so it enters as a constant
    varied, fixed = [d for d in parts if len(d) > 1], sum(float(d[0]) for d in parts if len(d) == 1)
    if not varied:
        return PairedTest(observed, observed, observed, p_value, n, exact)
    interval = stats.bootstrap(
        varied, lambda *ds, axis: (sum(d.mean(axis=axis) for d in ds) + fixed) / len(parts), vectorized=True,
        paired=False, n_resamples=resamples, method="percentile", rng=seed, batch=500).confidence_interval
    return PairedTest(observed, float(interval.low), float(interval.high), p_value, n, exact)


def group_collections(results: Mapping) -> dict[str, list[str]]:
    """{"in_domain", "zero_shot", "all"}: the collections of a results.json document in each group (empty groups
    left out), as its averages are taken."""
    flags = {name: info["zero_shot"] for name, info in results["collections"].items()}
    groups = {"in_domain": [c for c, z in flags.items() if not z], "zero_shot": [c for c, z in flags.items() if z],
              "all": list(flags)}
    return {group: names for group, names in groups.items() if names}


def format_p(p_value: float) -> str:
    """A p-value to four places, or "< 0.0001" below that (never a bare 0)."""
    return f"{p_value:.4f}" if p_value >= 1e-4 else "< 0.0001"


def _interval(low: float, high: float) -> str:
    return f"[{100 * low:+.2f}, {100 * high:+.2f}]"


def format_test(test: PairedTest) -> str:
    """Markdown cells: difference, 95% interval, p-value, queries (values x 100, as the tables' nDCG)."""
    return (f"{100 * test.difference:+.2f} | {_interval(test.low, test.high)} | {format_p(test.p_value)} | "
            f"{test.queries}")


def format_seed_test(test: SeedTest) -> str:
    """Markdown cells: 95% t interval, p-value (values x 100)."""
    return f"{_interval(test.low, test.high)} | {format_p(test.p_value)}"


def significance_markdown(runs: Mapping[str, tuple[Mapping, PerQuery]], metric: str = "ndcg@10") -> str:
    """Each run against the first (results.json document and its per-query table, by label): per group, the
    difference of the averages (x 100), its 95% paired bootstrap interval, the randomization p-value and the number
    of paired queries."""
    labels = list(runs)
    base_results, base_queries = runs[labels[0]]
    lines = [f"# Paired tests against {labels[0]} ({metric}, x 100; queries resampled within collections)", "",
             "| run | group | difference | 95% interval | p | queries |", "|---|---|---|---|---|---|"]
    for label in labels[1:]:
        results, queries = runs[label]
        for group, names in group_collections(base_results).items():
            test = paired_test(query_differences([queries], [base_queries], names, metric))
            lines.append(f"| {label} | {group.replace('_', '-')} | {format_test(test)} |")
    return "\n".join(lines) + "\n"
