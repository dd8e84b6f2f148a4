"""RMU's training step, lean: a forward that stops at `layers[L]`, and no second model copy.

RMU (Li et al., *The WMDP Benchmark*, arXiv 2403.03218; reference code `centerforaisafety/wmdp`,
`rmu/unlearn.py`) trains a few MLP output matrices so that, at the output of `layers[L]`,

- forget text is mapped onto a fixed random direction: `L_f = MSE(h_updated, c·u)`,
- retain text keeps the original activations: `L_r = α · MSE(h_updated, h_frozen)`,

one forget batch and one retain batch per step, `loss = L_f + L_r`, AdamW (lr 5e-5, eps 1e-6, no weight
decay). Farrell, Lau & Conmy (arXiv 2410.19278, `efarrell1/unlearning_with_saes`, `wmdp/rmu/unlearn.py`)
mask padding: squared errors summed over real tokens and d_model, divided by the number of real tokens.

Why no second copy is needed: only `down_proj` of layers L-2..L changes, so the frozen model *is* the
updated model with the original values of those few matrices. `frozen_acts` swaps the saved originals
in (the trained Parameter objects, their gradients and optimiser state are untouched) and runs the same
truncated forward without gradients. Nothing after `layers[L]` runs, in particular not the output layer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearn.checks import require_finite_tensors
from unlearn.errors import UnlearnError
from unlearn.hooks import decoder_layers, forward_to

DEFAULT_PARAM_PATTERN = r"(^|\.)layers\.{layer}\.mlp\.down_proj\.weight$"
"""Which parameters RMU trains, by name; `{layer}` is replaced by each updated layer. Upstream picks
"parameter 6 of the layer" by position, which on Gemma 3 (q_norm/k_norm come first) is `gate_proj`."""


def resid_hook(layer: int) -> str:
    """RMU's activation: the output of `layers[layer]` (TransformerLens `hook_resid_post`)."""
    return f"blocks.{layer}.hook_resid_post"


def steering_vectors(d_model: int, coeff: float, n: int, seed: int) -> list[Tensor]:
    """`n` control vectors `c·u`, one per forget source, drawn in order from one seeded generator.

    Upstream draws `torch.rand` (uniform on [0, 1), *not* randn, so u lies in the positive orthant) and
    normalises to unit length; returned as float32 `(d_model,)`.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        u_D = torch.rand(d_model, generator=gen, dtype=torch.float32)
        out.append(u_D / u_D.norm() * coeff)
    return out


def rmu_mse(acts_BTD: Tensor, target: Tensor, mask_BT: Tensor | None = None) -> Tensor:
    """RMU's squared error in float32, whatever dtype the model runs in.

    `target` is `(B, T, D)` or broadcastable (`(D,)` for the control vector). Without a mask: the plain
    mean over every element, padding included (upstream `F.mse_loss`). With a mask (Farrell et al.): the
    squared error summed over real tokens and d_model, divided by the number of real tokens.
    """
    acts_BTD = acts_BTD.float()
    target_BTD = target.to(device=acts_BTD.device, dtype=torch.float32).expand_as(acts_BTD)
    if mask_BT is None:
        return F.mse_loss(acts_BTD, target_BTD)
    m_BT1 = mask_BT.to(device=acts_BTD.device, dtype=torch.float32).unsqueeze(-1)
    sq_BTD = (acts_BTD - target_BTD).square() * m_BT1
    return sq_BTD.sum() / m_BT1.sum()


def select_params(model: nn.Module, layers: Sequence[int], pattern: str) -> dict[str, nn.Parameter]:
    """The parameters RMU trains: for each layer, every name matching `pattern` (with `{layer}`); at least
    one per layer, so a mistyped pattern is an error rather than a run that trains nothing."""
    n_layers = len(decoder_layers(model))
    named = dict(model.named_parameters())
    chosen: dict[str, nn.Parameter] = {}
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise UnlearnError(f"RMU update layer {layer} is out of range: the model has {n_layers} layers.")
        regex = re.compile(pattern.replace("{layer}", str(layer)))
        hits = [name for name in named if regex.search(name)]
        if not hits:
            example = next((n for n in named if ".mlp." in n), next(iter(named)))
            raise UnlearnError(
                f"RMU parameter pattern {pattern!r} matched 0 parameters in layer {layer}; it must match "
                f"at least one. Parameter names look like {example!r}; "
                "pass --param-pattern with a regex containing {layer}."
            )
        chosen.update({name: named[name] for name in hits})
    return chosen


@contextmanager
def swapped_params(model: nn.Module, values: dict[str, Tensor]) -> Iterator[None]:
    """Temporarily register other tensors under parameter names (what `torch.func.functional_call`
    does), leaving the original Parameter objects, their grads and optimiser state alone."""
    saved = []
    try:
        for name, value in values.items():
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            saved.append((owner, attr, owner._parameters[attr]))
            owner._parameters[attr] = value
        yield
    finally:
        for owner, attr, param in reversed(saved):
            owner._parameters[attr] = param


class StepLosses(NamedTuple):
    forget: float
    retain: float
    """Already multiplied by α (the term that is optimised)."""


class RMUTrainer:
    """Holds the model being unlearned, the original values of its trained matrices and the optimiser.

    The model is trained in place; `restore()` puts the original weights back and `changed_weights()`
    returns the trained matrices (what a run saves). Gemma has no dropout, so the model stays in eval mode.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        layer: int,
        update_layers: Sequence[int],
        control_vecs: Sequence[Tensor],
        alpha: float,
        lr: float = 5e-5,
        mask_padding: bool = False,
        mask_bos_id: int | None = None,
        param_pattern: str = DEFAULT_PARAM_PATTERN,
    ):
        self.model, self.layer, self.hook = model, layer, resid_hook(layer)
        self.alpha, self.mask_padding, self.mask_bos_id = alpha, mask_padding, mask_bos_id
        self.control_vecs = [v.float() for v in control_vecs]
        self.params = select_params(model, update_layers, param_pattern)
        # The frozen model's only difference: the original values of the trained matrices.
        self.originals = {
            n: nn.Parameter(p.detach().clone(), requires_grad=False) for n, p in self.params.items()
        }
        for p in self.params.values():
            p.requires_grad_(True)
        # Li et al.: AdamW lr 5e-5 (transformers.AdamW defaults eps 1e-6, weight decay 0.0).
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=lr, eps=1e-6, weight_decay=0.0)
        self.steps = 0

    def acts(self, inputs: dict[str, Tensor], *, grad: bool) -> Tensor:
        """`(B, T, D)` output of `layers[L]` from a forward that stops there."""
        with torch.set_grad_enabled(grad):
            return forward_to(self.model, [self.hook], detach=not grad, **inputs)[self.hook]

    def frozen_acts(self, inputs: dict[str, Tensor]) -> Tensor:
        """Activations of the original model: the same truncated forward with the originals swapped in."""
        with swapped_params(self.model, self.originals):
            return self.acts(inputs, grad=False)

    def _mask(self, inputs: dict[str, Tensor]) -> Tensor | None:
        if self.mask_bos_id is not None:  # BOS out too (its norm is 5-20x a token's): the masked form
            return inputs["attention_mask"] * (inputs["input_ids"] != self.mask_bos_id)
        return inputs["attention_mask"] if self.mask_padding else None

    def losses(
        self, forget: dict[str, Tensor], retain: dict[str, Tensor], topic: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Forget and (α-weighted) retain loss tensors, with graph, for one pair of tokenised batches."""
        frozen_BTD = self.frozen_acts(retain)
        forget_loss = rmu_mse(self.acts(forget, grad=True), self.control_vecs[topic], self._mask(forget))
        retain_loss = self.alpha * rmu_mse(self.acts(retain, grad=True), frozen_BTD, self._mask(retain))
        return forget_loss, retain_loss

    def step(self, forget: dict[str, Tensor], retain: dict[str, Tensor], topic: int = 0) -> StepLosses:
        """One RMU update; a non-finite loss raises before any weight changes."""
        forget_loss, retain_loss = self.losses(forget, retain, topic)
        f, r = forget_loss.item(), retain_loss.item()
        if not (math.isfinite(f) and math.isfinite(r)):
            bad = "nan" if math.isnan(f) or math.isnan(r) else "inf"
            raise UnlearnError(
                f"RMU loss became {bad} at step {self.steps} (forget={f:.4g}, retain={r:.4g}); "
                "lower --lr or --steering-coeff (or run in float32 with --dtype float32)."
            )
        self.optimizer.zero_grad(set_to_none=True)
        (forget_loss + retain_loss).backward()
        try:
            self.optimizer.step()
        except RuntimeError as e:  # AdamW's step size overflows the weights' dtype (a huge --lr)
            if "overflow" not in str(e):
                raise
            raise UnlearnError(f"RMU update at step {self.steps} overflowed ({e}); lower --lr") from None
        self.steps += 1
        # the loss above is the one before this update; an overflowing step shows only in the weights
        require_finite_tensors(
            self.params, f"the RMU weights after step {self.steps - 1}", "lower --lr or --steering-coeff"
        )
        return StepLosses(f, r)

    def changed_weights(self) -> dict[str, Tensor]:
        """The trained matrices under their parameter names (contiguous CPU copies, model dtype)."""
        return {n: p.detach().to("cpu").contiguous().clone() for n, p in self.params.items()}

    def finish(self) -> None:
        """Freeze the trained matrices again (loaded models come with `requires_grad_(False)`)."""
        for p in self.params.values():
            p.requires_grad_(False)
            p.grad = None

    def restore(self) -> None:
        """Put the original weights back (the model is then the unlearned-from model again)."""
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.originals[n])
        self.finish()


def text_batches(source: str, batch_size: int, n: int, min_len: int = 0) -> list[list[str]]:
    """The first `n` batches of a corpus in file order (as centerforaisafety/wmdp `rmu/unlearn.py`), skipping texts ≤ `min_len` chars."""
    from unlearn.data import iter_texts

    texts = (t for t in iter_texts(source) if len(t) > min_len)
    chunks = iter(lambda: list(islice(texts, batch_size)), [])  # stops at the corpus end
    return list(islice(chunks, n))  # reads no further than needed


def tokenize(tokenizer, texts: list[str], max_length: int, device: torch.device) -> dict[str, Tensor]:
    """Right padding and right truncation, as both reference implementations; BOS as the tokenizer adds it."""
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "right"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                        padding_side="right")  # fmt: skip
    finally:
        tokenizer.truncation_side = side
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


def mean_resid_norm(
    model: nn.Module, layer: int, batches: Sequence[dict[str, Tensor]], bos_id: int | None
) -> float:
    """Mean per-token L2 norm of the output of `layers[layer]` over real tokens (BOS and padding excluded).

    What a relative steering coefficient is scaled by: residual norms grow with depth (on Gemma 3 270M
    ~1,200 per token at layer 2, ~3,400 at layer 6), so one absolute `c` means different things per layer,
    and BOS (norms 5-20x larger) would dominate a mean that kept it."""
    hook = resid_hook(layer)
    total, count = 0.0, 0
    for inputs in batches:
        with torch.no_grad():
            h_BTD = forward_to(model, [hook], **inputs)[hook]
        keep_BT = inputs["attention_mask"].bool()
        if bos_id is not None:
            keep_BT = keep_BT & (inputs["input_ids"] != bos_id)
        norms = h_BTD.double().norm(dim=-1)[keep_BT]
        total, count = total + norms.sum().item(), count + norms.numel()
    if count == 0:
        raise UnlearnError(
            "No real token to measure the residual norm on (every retain text is empty or only BOS); "
            "pass a non-empty --retain-source or an absolute --steering-coeff."
        )
    return total / count


CONVERGED_RATIO = 0.5
"""A run converged when its final forget loss is at most this fraction of the initial one."""
TAIL_FRACTION = 0.1
"""The final forget loss is the mean over this last fraction of the steps (at least one step)."""


def forget_target_scale(coeff: float, d_model: int, mask_padding: bool) -> float:
    """The forget loss of an all-zero activation: `‖c·u‖²` per token (masked loss) or `c²/D` (plain mean).

    A scale to read the forget loss against: pushing `h` onto `c·u` drives the loss to 0 from about
    `(‖h‖² + c²)/D` (unmasked; `u` is nearly orthogonal to `h` only when c dominates)."""
    return coeff**2 if mask_padding else coeff**2 / d_model


def convergence(
    forget_losses: Sequence[float], target_scale: float, n_sources: int = 1,
    ratio: float = CONVERGED_RATIO, tail: float = TAIL_FRACTION,
) -> dict:  # fmt: skip
    """Whether the forget loss fell far enough: mean over the last `tail` of the steps ≤ `ratio` × initial.

    The initial loss is the mean of the first step of each forget source (sources alternate per step).
    """
    if not forget_losses:
        raise UnlearnError("No RMU step ran, so convergence cannot be judged; pass --n-batches ≥ 1.")
    n_tail = max(1, math.ceil(tail * len(forget_losses)))
    initial = sum(forget_losses[:n_sources]) / len(forget_losses[:n_sources])
    final = sum(forget_losses[-n_tail:]) / n_tail
    return {
        "converged": bool(final <= ratio * initial),
        "criterion": f"mean forget loss over the last {n_tail} step(s) <= {ratio} x initial",
        "forget_loss_initial": initial,
        "forget_loss_final": final,
        "final_over_initial": final / initial if initial else math.nan,
        "target_scale": target_scale,
        "final_over_target": final / target_scale if target_scale else math.nan,
    }
