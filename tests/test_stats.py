"""Bootstrap intervals and AUROC against independent computations (brute force, scikit-learn)."""

import itertools

import numpy as np
import pytest

from unlearn.stats import auroc, bootstrap_ci, paired_delta_ci


def test_auroc_equals_brute_force_pair_count_with_ties():
    rng = np.random.default_rng(1)
    pos, neg = rng.integers(0, 5, 40).astype(float), rng.integers(0, 4, 30).astype(float)
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    assert auroc(pos, neg) == pytest.approx(np.mean(pairs), abs=1e-12)
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    assert auroc(pos, neg) == pytest.approx(sklearn_metrics.roc_auc_score(labels, np.r_[pos, neg]))


def test_auroc_extremes():
    assert auroc([2, 3], [0, 1]) == 1.0 and auroc([0, 1], [2, 3]) == 0.0 and auroc([1, 1], [1]) == 0.5


def test_bootstrap_interval_covers_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.random(50) < 0.6, rng.random(5000) < 0.6
    ci_small, ci_large = bootstrap_ci(small), bootstrap_ci(large)
    assert ci_small.low <= ci_small.value <= ci_small.high
    assert ci_small.value == pytest.approx(small.mean())
    assert (ci_large.high - ci_large.low) < (ci_small.high - ci_small.low) / 5
    # the binomial standard error gives the width a normal approximation expects
    se = np.sqrt(0.6 * 0.4 / 5000)
    assert ci_large.high - ci_large.low == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_paired_delta_is_tighter_than_unpaired_when_outcomes_correlate():
    rng = np.random.default_rng(0)
    before = rng.random(300) < 0.7
    after = before.copy()
    after[rng.choice(300, 15, replace=False)] = False  # a few questions flip
    paired = paired_delta_ci(after, before)
    assert paired.value == pytest.approx(after.mean() - before.mean())
    assert paired.high - paired.low < (bootstrap_ci(after).high - bootstrap_ci(after).low) / 2
    with pytest.raises(ValueError):
        paired_delta_ci(after[:10], before)


def test_non_finite_values_are_refused():
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_ci([0.0, float("nan")])


def test_interval_matches_binomial_normal_approximation():
    """At n = 400, p = 0.3 the percentile bootstrap of a 0/1 mean is close to p ± 1.96 sqrt(p(1-p)/n)."""
    values = np.r_[np.ones(120), np.zeros(280)]
    ci = bootstrap_ci(values, n_boot=20000)
    se = np.sqrt(0.3 * 0.7 / 400)
    assert ci.value == pytest.approx(0.3)
    assert ci.low == pytest.approx(0.3 - 1.96 * se, abs=0.006)
    assert ci.high == pytest.approx(0.3 + 1.96 * se, abs=0.006)


def test_stratified_bootstrap_matches_brute_force_loop_and_stratified_variance():
    from unlearn.stats import N_BOOT, SEED, stratified_bootstrap_ci

    rng = np.random.default_rng(3)
    values = np.r_[rng.random(30) < 0.9, rng.random(70) < 0.2].astype(float)
    strata = np.r_[["a"] * 30, ["b"] * 70]
    ci = stratified_bootstrap_ci(values, strata)
    # brute force: the same random stream, one resample at a time, one stratum after the other
    gen = np.random.default_rng(SEED)
    draws = {s: gen.integers(0, (strata == s).sum(), size=(N_BOOT, (strata == s).sum())) for s in ("a", "b")}
    means = [
        sum(values[strata == s][draws[s][b]].sum() for s in ("a", "b")) / len(values) for b in range(N_BOOT)
    ]
    assert (ci.low, ci.high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert ci.value == pytest.approx(values.mean())
    # width vs the stratified normal approximation: var = sum_s n_s^2 p_s(1-p_s)/n_s / n^2
    p = {s: values[strata == s].mean() for s in ("a", "b")}
    n = {s: (strata == s).sum() for s in ("a", "b")}
    se = np.sqrt(sum(n[s] * p[s] * (1 - p[s]) for s in p)) / len(values)
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_paired_deltas_match_task_and_index_and_split_known_from_all():
    import pandas as pd

    from unlearn.stats import paired_deltas, stratified_bootstrap_ci

    rng = np.random.default_rng(5)
    rows = []
    for task, role, n in (("f", "forget", 60), ("r1", "retain", 40), ("r2", "retain", 50)):
        for i in range(n):
            rows.append({"task": task, "role": role, "index": i, "correct": rng.random() < 0.7,
                         "known": rng.random() < 0.6})  # fmt: skip
    base = pd.DataFrame(rows)
    point = base.copy()
    flip = rng.random(len(point)) < 0.3
    point.loc[flip, "correct"] = ~point.loc[flip, "correct"]
    shuffled = point.sample(frac=1.0, random_state=0).drop(columns="known")  # order must not matter
    out = paired_deltas(shuffled, base)
    for role in ("forget", "retain"):
        sel = base["role"] == role
        diff = point["correct"].astype(float) - base["correct"].astype(float)
        known = sel & base["known"]
        assert out[role].value == pytest.approx(diff[known].mean())
        assert out[role + "_all"].value == pytest.approx(diff[sel].mean())
        ref = stratified_bootstrap_ci(diff[known], base["task"][known])
        assert (out[role].low, out[role].high) == pytest.approx((ref.low, ref.high))
    # an unmatched question (index 999) is ignored; a missing column is an UnlearnError
    extra = pd.concat([shuffled, shuffled.head(1).assign(index=999)])
    assert paired_deltas(extra, base)["forget_all"].value == pytest.approx(out["forget_all"].value)
    from unlearn.errors import UnlearnError

    with pytest.raises(UnlearnError, match="index"):
        paired_deltas(point.drop(columns="index"), base)
