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


def stratified_bootstrap_ci(
    values, strata, *, level: float = 0.95, n_boot: int = N_BOOT, seed: int = SEED
) -> Interval:
    """Pooled (question-weighted) mean with a bootstrap that resamples within each stratum (task), so
    every resample keeps each task's question count, as the pooled accuracy over fixed tasks does."""
    values_N = np.asarray(values, dtype=np.float64).ravel()
    strata_N = np.asarray(strata).ravel()
    if values_N.size == 0:
        raise ValueError("stratified_bootstrap_ci needs at least one value")
    if values_N.shape != strata_N.shape:
        raise ValueError(f"values and strata need equal lengths, got {values_N.shape} and {strata_N.shape}")
    if not np.isfinite(values_N).all():
        raise ValueError("stratified_bootstrap_ci got non-finite values")
    rng = np.random.default_rng(seed)
    sums_B = np.zeros(n_boot)
    for s in dict.fromkeys(strata_N.tolist()):  # first-seen order: reproducible for a given frame
        group_M = values_N[strata_N == s]
        idx_BM = rng.integers(0, len(group_M), size=(n_boot, len(group_M)))
        sums_B += group_M[idx_BM].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(sums_B / values_N.size, [tail, 100 - tail])
    return Interval(float(values_N.mean()), float(low), float(high))


def outcome_column(frame) -> str:
    """The per-question outcome whose mean is the reported accuracy: the fraction of the 24 orders
    answered right under the permuted letter protocol, else 0/1 `correct`."""
    return "frac_correct" if "frac_correct" in frame.columns else "correct"


def paired_deltas(point_frame, baseline_frame, *, roles=("forget", "retain")) -> dict[str, Interval | None]:
    """Pooled accuracy change `point - baseline` per role, with a paired bootstrap stratified by task.

    Both frames are per-question tables of `EvalSuite.run` (columns task, role, index, the outcome and,
    where a known subset exists, `known`); rows are matched on task + index, so only questions scored in
    both count. Keys: `forget`, `retain` (the known subset where the frames mark one, else all questions)
    and `forget_all`, `retain_all` (every matched question); None where a role has no matched question."""
    from unlearn.errors import UnlearnError

    for name, frame in (("point", point_frame), ("baseline", baseline_frame)):
        missing = {"task", "role", "index"} - set(frame.columns)
        if missing:
            raise UnlearnError(f"{name} per-question table lacks columns {sorted(missing)}; pass the "
                               "questions table an evaluation wrote (questions.csv / questions/<point>.csv)")  # fmt: skip
    col_p, col_b = outcome_column(point_frame), outcome_column(baseline_frame)
    keep_b = ["task", "index", col_b] + (["known"] if "known" in baseline_frame.columns else [])
    merged = (
        point_frame[["task", "role", "index", col_p]]
        .merge(baseline_frame[keep_b], on=["task", "index"], suffixes=("_p", "_b"), validate="one_to_one")
        .sort_values(["task", "index"], kind="stable", ignore_index=True)
    )  # row order must not change the draw
    after = merged[col_p + "_p" if col_p == col_b else col_p].astype(float)
    before = merged[col_b + "_b" if col_p == col_b else col_b].astype(float)
    known = merged["known"] if "known" in merged.columns else None
    has_known = known is not None and known.notna().any()
    out: dict[str, Interval | None] = {}
    for role in roles:
        in_role = (merged["role"] == role).to_numpy()
        for key, mask in (
            (role + "_all", in_role),
            (role, in_role & _truthy(known) if has_known else in_role),
        ):
            out[key] = (
                stratified_bootstrap_ci((after - before)[mask], merged["task"][mask]) if mask.any() else None
            )
    return out


def _truthy(series) -> np.ndarray:
    """A `known` column read back from CSV may hold bools, 0/1 or the strings True/False."""
    return series.map(lambda v: v is True or v == 1 or str(v).lower() == "true").to_numpy(dtype=bool)
