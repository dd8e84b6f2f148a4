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
