"""Uncertainty and separability: bootstrap intervals for accuracies and paired deltas, and AUROC.

Every accuracy the toolkit reports is a mean of per-question outcomes on a few hundred questions, so it
carries sampling noise of several points; a claimed effect must be read beside its interval. The
percentile bootstrap (Efron & Tibshirani 1993, ch. 13) resamples questions with replacement; a *paired*
delta resamples the same question indices for both model states, which is what removes the shared
per-question difficulty from the comparison. Seeds are fixed so reports are reproducible.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

N_BOOT = 2000
"""Bootstrap resamples: enough for stable 95% percentile bounds (Monte-Carlo error ~0.5 points)."""
SEED = 0


class Interval(NamedTuple):
    """A point estimate with a two-sided percentile interval."""

    value: float
    low: float
    high: float


def _resample_means(values_N: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx_BN = rng.integers(0, len(values_N), size=(n_boot, len(values_N)))
    return values_N[idx_BN].mean(axis=1)


def bootstrap_ci(values, *, level: float = 0.95, n_boot: int = N_BOOT, seed: int = SEED) -> Interval:
    """Mean of per-question outcomes (0/1 correct, or fractions) with a percentile bootstrap interval."""
    values_N = np.asarray(values, dtype=np.float64).ravel()
    if values_N.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not np.isfinite(values_N).all():
        raise ValueError("bootstrap_ci got non-finite values")
    means_B = _resample_means(values_N, n_boot, seed)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means_B, [tail, 100 - tail])
    return Interval(float(values_N.mean()), float(low), float(high))


def paired_delta_ci(after, before, **kwargs) -> Interval:
    """Mean of `after - before` over the same questions (a paired bootstrap of the change)."""
    after_N = np.asarray(after, dtype=np.float64).ravel()
    before_N = np.asarray(before, dtype=np.float64).ravel()
    if after_N.shape != before_N.shape:
        raise ValueError(f"paired outcomes need equal lengths, got {after_N.shape} and {before_N.shape}")
    return bootstrap_ci(after_N - before_N, **kwargs)


def auroc(positive, negative) -> float:
    """Probability that a random positive scores above a random negative (ties count one half): the
    Mann-Whitney U statistic divided by n_pos * n_neg, computed from mid-ranks in O(n log n)."""
    pos_P = np.asarray(positive, dtype=np.float64).ravel()
    neg_M = np.asarray(negative, dtype=np.float64).ravel()
    if pos_P.size == 0 or neg_M.size == 0:
        raise ValueError("auroc needs at least one positive and one negative score")
    scores = np.concatenate([pos_P, neg_M])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # mid-ranks: tied scores share the mean of the ranks they span (1-based)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + 1 + e) / 2
    u = ranks[: len(pos_P)].sum() - len(pos_P) * (len(pos_P) + 1) / 2
    return float(u / (len(pos_P) * len(neg_M)))
