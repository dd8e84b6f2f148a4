"""Direction ablation: project the unlearning edit's dominant direction out of the edited layer's output.

Łucki et al. (arXiv 2409.18025, code `ethz-spylab/unlearning-vs-safety`) show that removing one
activation direction recovers most RMU-unlearned knowledge. The direction is estimated as the top right
singular vector of the matrix of per-token differences (unlearned − base) at the edited hook point on
forget dev text, over the tokens the method actually edited only (`edited_tokens`; BOS and padding
excluded): for an SAE hook the rows are the clamp's own Δx on the tokens it touched, known exactly; for
RMU, the tokens whose activation moved by a large fraction of its norm. Tokens the method leaves (almost)
alone carry no information on the edit and, for RMU, only its small retain-side drift, which would tilt
the estimate toward directions the model uses everywhere. For an SAE edit the edit lies exactly in the
span of the clamped features' decoder rows, so that span can be projected out instead.

The projection acts on the *unlearned* model only: its hook is installed after the method's hook at the
same point, so it edits the already-edited activation. Łucki et al. zero the component (`x − Q Qᵀ x`, Q
orthonormal, float64); with `mean_D` it is set to the base model's mean instead, `x − Q Qᵀ (x − μ)` (mean
ablation): an edit direction built from SAE decoder rows carries a large component on *every* token of
the base model too, and zeroing it damages the model more than the edit did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn

from unlearn.errors import UnlearnError
from unlearn.hooks import edit, forward_to


def orthonormal(basis_DK: Tensor) -> Tensor:
    """An orthonormal basis (float64) of the span of the columns of `basis_DK` (rank-revealing via SVD)."""
    b_DK = basis_DK.detach().to(torch.float64)
    u_DK, s_K, _ = torch.linalg.svd(b_DK, full_matrices=False)
    keep = s_K > s_K.max() * max(b_DK.shape) * torch.finfo(torch.float64).eps
    if not bool(keep.any()):
        raise UnlearnError("The directions to project out are all zero.")
    return u_DK[:, keep]


def project_out(x_ND: Tensor, q_DK: Tensor, mean_D: Tensor | None = None) -> Tensor:
    """`x − ((x − μ) Q) Qᵀ` computed in float64 (then cast back by the hook; μ = 0 without `mean_D`): the
    component in span(Q) becomes μ's, and nothing orthogonal to span(Q) changes."""
    q = q_DK.to(device=x_ND.device, dtype=torch.float64)
    x = x_ND.to(torch.float64)
    centred = x if mean_D is None else x - mean_D.to(device=x.device, dtype=torch.float64)
    return x - (centred @ q) @ q.T


@contextmanager
def ablated(model: nn.Module, hook: str, basis_DK: Tensor, mean_D: Tensor | None = None) -> Iterator[None]:
    """Project span(basis) out of the activation at `hook` (to `mean_D`'s component, if given) for every
    forward inside the block."""
    q_DK = orthonormal(basis_DK)
    with edit(model, hook, lambda x: project_out(x, q_DK, mean_D)):
        yield


class EditRows(NamedTuple):
    """The (unlearned − base) rows of the tokens an unlearned state edited, and how many were looked at."""

    diff_ND: Tensor
    """float64, one row per edited token."""
    n_tokens: int
    """Real, non-BOS tokens forwarded."""
    n_edited: int
    base_mean_D: Tensor | None = None
    """float64 mean of the base model's activation over every real, non-BOS token looked at (the value
    mean ablation sets the direction's component to)."""


def edited_tokens(diff_ND: Tensor, base_ND: Tensor, rule: str = "nonzero", min_rel: float = 0.2) -> Tensor:
    """Which tokens the method edited. `nonzero`: Δ ≠ 0 exactly. At an SAE hook point the difference
    there *is* the clamp's own edit Δx (nothing upstream changed, and the clamp returns untouched
    positions bit-identical), so this is the set of edited tokens, known exactly. `large`: ‖Δ‖ ≥
    `min_rel`·‖x_base‖, for weight edits (RMU) that move every token a little and forget tokens a lot."""
    norm_N = diff_ND.norm(dim=-1)
    if rule == "nonzero":
        return norm_N > 0
    if rule == "large":
        return norm_N >= min_rel * base_ND.norm(dim=-1)
    raise UnlearnError(f"Unknown edited-token rule {rule!r}; use nonzero or large.")


def edit_differences(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    unlearned: Callable[[nn.Module], AbstractContextManager],
    hook: str,
    *,
    rule: str = "nonzero",
    min_rel: float = 0.2,
    max_tokens: int = 2048,
    max_length: int = 64,
    batch_size: int = 8,
) -> EditRows:
    """Per-token (unlearned − base) activations at `hook` on the tokens the state edited (`edited_tokens`
    with `rule`), BOS and padding excluded; stops once `max_tokens` edited tokens are collected."""
    rows: list[Tensor] = []
    n_edited = n_tokens = 0
    base_sum_D: Tensor | None = None
    device = next(model.parameters()).device
    bos = tokenizer.bos_token_id
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt", padding=True,
                        truncation=True, max_length=max_length)  # fmt: skip
        inputs = {
            "input_ids": enc["input_ids"].to(device),
            "attention_mask": enc["attention_mask"].to(device),
        }
        keep_BT = (inputs["attention_mask"] == 1) & (inputs["input_ids"] != bos)
        with torch.inference_mode():
            base_BTD = forward_to(model, [hook], **inputs)[hook]
            with unlearned(model):
                edited_BTD = forward_to(model, [hook], **inputs)[hook]
        base_ND = base_BTD.double()[keep_BT]
        diff_ND = edited_BTD.double()[keep_BT] - base_ND
        mask_N = edited_tokens(diff_ND, base_ND, rule, min_rel)
        rows.append(diff_ND[mask_N])
        base_sum_D = base_ND.sum(0) if base_sum_D is None else base_sum_D + base_ND.sum(0)
        n_tokens += int(keep_BT.sum())
        n_edited += int(mask_N.sum())
        if n_edited >= max_tokens:
            break
    if n_edited == 0:
        raise UnlearnError(
            f"The unlearned state edited none of the {n_tokens} tokens of the direction text at {hook} "
            "(a gate that never fired, or --direction-text off topic); pass forget-topic --direction-text."
        )
    return EditRows(torch.cat(rows)[:max_tokens], n_tokens, n_edited, base_sum_D / max(n_tokens, 1))


def dominant_direction(diff_ND: Tensor) -> tuple[Tensor, float]:
    """Top right singular vector of the difference matrix (unit norm, float64, signed so the mean
    difference points along it) and the fraction of the squared norm it explains."""
    d = diff_ND.to(torch.float64)
    _, s_K, vh_KD = torch.linalg.svd(d, full_matrices=False)
    if float(s_K[0]) == 0.0:
        raise UnlearnError("The unlearned state does not change activations at its hook point on this text.")
    d_D = vh_KD[0]
    if float(d.mean(0) @ d_D) < 0:
        d_D = -d_D
    return d_D, float(s_K[0] ** 2 / (s_K**2).sum())
