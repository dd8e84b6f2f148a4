"""The recovered fraction of an unlearning gap, with a paired bootstrap interval.

recovered = (acc_attacked − acc_unlearned) / (acc_base − acc_unlearned): 0 means the attack recovers
nothing, 1 that it restores the base model's accuracy. The three states are scored on the same
questions, so the bootstrap resamples question indices jointly for all three (a paired design, as in
`unlearn.stats.paired_delta_ci`), which removes the shared per-question difficulty from the interval.
"""

from __future__ import annotations

import numpy as np

from unlearn.stats import N_BOOT, SEED, Interval


def recovered_fraction(
    base, unlearned, attacked, *, level: float = 0.95, n_boot: int = N_BOOT, seed: int = SEED
) -> Interval | None:
    """Point estimate and percentile interval, or None when the unlearned gap is below one question
    (the ratio is then undefined). Resamples whose gap is below one question are dropped."""
    b_N, u_N, a_N = (np.asarray(v, dtype=np.float64).ravel() for v in (base, unlearned, attacked))
    if not b_N.shape == u_N.shape == a_N.shape or b_N.size == 0:
        raise ValueError(
            f"paired outcomes need equal non-zero lengths, got {b_N.size}, {u_N.size}, {a_N.size}"
        )
    n = b_N.size
    gap = b_N.mean() - u_N.mean()
    if abs(gap) * n < 1 - 1e-9:
        return None
    rng = np.random.default_rng(seed)
    idx_BN = rng.integers(0, n, size=(n_boot, n))
    gaps_B = b_N[idx_BN].mean(1) - u_N[idx_BN].mean(1)
    gains_B = a_N[idx_BN].mean(1) - u_N[idx_BN].mean(1)
    ok_B = np.abs(gaps_B) * n >= 1 - 1e-9
    ratios = gains_B[ok_B] / gaps_B[ok_B]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail]) if ratios.size else (np.nan, np.nan)
    return Interval(float((a_N.mean() - u_N.mean()) / gap), float(low), float(high))
