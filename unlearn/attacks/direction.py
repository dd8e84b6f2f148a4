"""Direction ablation: project the unlearning edit's dominant direction out of the edited layer's output.

Łucki et al. (arXiv 2409.18025, code `ethz-spylab/unlearning-vs-safety`) show that removing one
activation direction recovers most RMU-unlearned knowledge. The direction is estimated as the top right
singular vector of the matrix of per-token differences (unlearned − base) at the edited hook point on
forget dev text (BOS and padding excluded). For an SAE edit the edit lies exactly in the span of the
clamped features' decoder rows, so that span can be projected out instead. The projection hook is
installed after the unlearning hook, so it acts on the edited activation: `x − Q Qᵀ x` (Q orthonormal).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

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


def project_out(x_ND: Tensor, q_DK: Tensor) -> Tensor:
    """`x − (x Q) Qᵀ` computed in float64 (then cast back by the hook): removes exactly the component
    in span(Q) and nothing orthogonal to it."""
    q = q_DK.to(device=x_ND.device, dtype=torch.float64)
    x = x_ND.to(torch.float64)
    return x - (x @ q) @ q.T


@contextmanager
def ablated(model: nn.Module, hook: str, basis_DK: Tensor) -> Iterator[None]:
    """Project span(basis) out of the activation at `hook` for every forward inside the block."""
    q_DK = orthonormal(basis_DK)
    with edit(model, hook, lambda x: project_out(x, q_DK)):
        yield


def edit_differences(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    unlearned: Callable[[nn.Module], AbstractContextManager],
    hook: str,
    *,
    max_tokens: int = 2048,
    max_length: int = 64,
    batch_size: int = 8,
) -> Tensor:
    """Per-token (unlearned − base) activations at `hook`, (N, D) float64, BOS and padding excluded."""
    rows: list[Tensor] = []
    n = 0
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
        rows.append((edited_BTD.double() - base_BTD.double())[keep_BT])
        n += int(keep_BT.sum())
        if n >= max_tokens:
            break
    if not rows or n == 0:
        raise UnlearnError(
            "No tokens to estimate the edit direction from; pass a non-empty --direction-text."
        )
    return torch.cat(rows)[:max_tokens]


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
