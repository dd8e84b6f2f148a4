"""The controls beside every `intervene` point, and the size of an edit.

- `random-features`: frequency-matched random features (drawn at selection, `feature_checks`), clamped
  the same way as the selected ones.
- `random-direction`: the same coefficients `f' - f` on the chosen decoder rows rotated by one seeded
  Haar-random orthogonal matrix: the edit keeps its per-token norm exactly, but points nowhere in
  particular. An effect a control shows too is not about the topic.
- `EditStats`: mean ||Δx|| / ||x|| over edited tokens and the fraction of tokens edited, accumulated by
  the clamp hook over the very forwards of a point's evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from unlearn.errors import UnlearnError

Control = Literal["random-features", "random-direction"]
CONTROLS: tuple[str, ...] = get_args(Control)
_CONTROL_SUFFIX = {"random-features": "ctrl-features", "random-direction": "ctrl-direction"}


def random_rotation(d: int, seed: int = 0, *, dtype=torch.float64, device=None) -> Tensor:
    """A Haar-random orthogonal (d, d) matrix (QR of a Gaussian with the signs of R's diagonal fixed,
    Mezzadri 2007, arXiv math-ph/0609050), seeded. `W_dec[K] @ Q` keeps every inner product of the
    chosen rows, so a rotated edit has exactly the per-token norm of the real one."""
    g = torch.Generator().manual_seed(seed)
    q_DD, r_DD = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q_DD = q_DD * torch.where(torch.diagonal(r_DD) < 0, -1.0, 1.0)
    return q_DD.to(dtype=dtype, device=device)


@dataclass
class EditStats:
    """Edit size over the forwards run with a clamp hook: real tokens (attention mask, BOS excluded),
    how many were edited (Δx ≠ 0), and the sum of ||Δx|| / ||x|| over the edited ones."""

    tokens: int = 0
    edited: int = 0
    rel_norm_sum: float = 0.0

    def update(self, x_ND: Tensor, out_ND: Tensor, real_N: Tensor) -> None:
        dx_ND = out_ND.double() - x_ND.double()
        dnorm_N = dx_ND.norm(dim=-1)
        edited_N = real_N & (dnorm_N > 0)
        self.tokens += int(real_N.sum())
        self.edited += int(edited_N.sum())
        self.rel_norm_sum += float((dnorm_N / x_ND.double().norm(dim=-1).clamp_min(1e-12))[edited_N].sum())

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "edited_frac": self.edited / max(self.tokens, 1),
                "rel_norm": self.rel_norm_sum / self.edited if self.edited else 0.0}  # fmt: skip


def with_controls(
    points: list[tuple[str, str, int, float]], controls: Sequence[str]
) -> list[tuple[str, str, int, float, Control | None]]:
    """Each point followed by its control points (`<id>_ctrl-features`, `<id>_ctrl-direction`)."""
    bad = [c for c in controls if c not in CONTROLS]
    if bad:
        raise UnlearnError(f"Unknown control(s) {', '.join(bad)}; use {', '.join(CONTROLS)} or none.")
    out = []
    for pid, mode, n, scale in points:
        out.append((pid, mode, n, scale, None))
        out += [(f"{pid}_{_CONTROL_SUFFIX[c]}", mode, n, scale, c) for c in CONTROLS if c in controls]
    return out


def feature_info(selection, ranked: list[int], lm, sae, hook: str, preset, *, unit: str,
                 controls: Sequence[str], topic: str | None, seed: int):  # fmt: skip
    """(typical activations, control features, their typical activations) aligned with `ranked`: from
    the selection, or measured now on the preset's selection text for explicit `--feature-ids`."""
    need = unit == "typical" or "random-features" in controls
    if not need:
        return None, None, None
    if (
        selection is not None
        and selection.typical is not None
        and ("random-features" not in controls or selection.controls is not None)
    ):
        return selection.typical, selection.controls, selection.control_typical
    if selection is not None:
        raise UnlearnError(
            f"{selection.source} has no typical activations / controls (made by an older version): rerun "
            "select-features, or pass --clamp-unit absolute --controls none."
        )
    from unlearn.clamp.feature_checks import measure_features

    if preset is None or not preset.select.get("forget_text"):
        raise UnlearnError(
            "--feature-ids without a preset: no text to measure typical activations and matched controls "
            "on; pass --clamp-unit absolute --controls none, or --features <select-features run>."
        )
    topic = topic or next(iter(preset.select["forget_text"]))
    info = measure_features(lm, sae, hook, preset, topic, ranked, seed=seed)
    return info["typical_activation"], info["controls"], info["control_typical_activation"]
