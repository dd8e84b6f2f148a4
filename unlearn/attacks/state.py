"""Unlearned states: a method as a context-manager factory over a loaded model.

Attacks receive `Target(model) -> ContextManager`: inside the block the model is unlearned (a clamp hook is
installed, or RMU's trained matrices are swapped in), and on exit it is exactly as before (hooks removed,
original weights copied back). `Target` also carries what the direction attack needs: the edited hook
point and, for SAE edits, the decoder rows whose span the edit moves activations in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from unlearn.errors import UnlearnError


@dataclass
class Target:
    """An unlearned state: `target(model)` is a context manager that unlearns `model` inside the block."""

    name: str
    kind: Literal["hook", "weights"]
    """`hook`: the method is a forward hook (nothing protects the weights); `weights`: RMU-style."""
    enter: Callable[[nn.Module], AbstractContextManager]
    hook: str
    """The edited hook point (SAE hook point, or RMU's `blocks.<L>.hook_resid_post`)."""
    decoder_basis_DK: Tensor | None = None
    """For SAE edits: the clamped features' decoder rows (as columns), the exact span of the edit."""

    def __call__(self, model: nn.Module) -> AbstractContextManager:
        return self.enter(model)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of `module` need no gradient inside the block (an SAE under a relearning attack)."""
    params = list(module.parameters())
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag)


def clamp_target(
    sae: nn.Module,
    features: Sequence[int],
    mode: str = "clamp",
    scale: float = -20.0,
    *,
    hook: str | None = None,
    name: str | None = None,
    gate: Callable[[nn.Module], AbstractContextManager] | None = None,
) -> Target:
    """The paper's static clamp (arXiv 2410.19278) as a Target; `gate(model)`, when given, replaces the
    plain clamp by a gated one (its context manager must install the hook and the gate together)."""
    from unlearn.intervene import clamp

    hook = hook or sae.hook_name
    feats = [int(f) for f in features]

    @contextmanager
    def enter(model: nn.Module) -> Iterator[None]:
        inner = gate(model) if gate else clamp(model, sae, feats, mode, scale, hook_name=hook)  # type: ignore[arg-type]
        with frozen(sae), inner:
            yield

    basis_DK = sae.W_dec[torch.as_tensor(feats, dtype=torch.long)].detach().T.clone()
    label = name or f"{'gated ' if gate else ''}{mode} {len(feats)} @ {scale:g}"
    return Target(label, "hook", enter, hook, basis_DK)


@contextmanager
def swapped(model: nn.Module, weights: dict[str, Tensor]) -> Iterator[None]:
    """Copy `weights` into the model's parameters of the same names; the originals come back on exit."""
    params = dict(model.named_parameters())
    bad = [n for n, w in weights.items() if n not in params or params[n].shape != w.shape]
    if bad or not weights:
        raise UnlearnError(
            f"Trained weights do not fit this model (unknown or mismatched: {bad[:3]}); load the base model "
            "the RMU run used (see its config.json)."
        )
    saved = {n: params[n].detach().clone() for n in weights}
    try:
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(w.to(device=params[n].device, dtype=params[n].dtype))
        yield
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                params[n].copy_(w)


def weights_target(weights: dict[str, Tensor], hook: str, name: str = "rmu") -> Target:
    """RMU-style state from in-memory matrices (what `unlearn rmu-baseline` saves)."""
    return Target(name, "weights", lambda model: swapped(model, weights), hook)


def rmu_target(run: str | Path) -> Target:
    """An `unlearn rmu-baseline` run (folder, weights file or run id) as a Target at its edited layer."""
    from safetensors.torch import load_file

    from unlearn.results import read_json
    from unlearn.rmu import _weights_path

    path = _weights_path(run)
    config = path.parent / "config.json"
    cfg = read_json(config) if config.is_file() else {}
    layer = cfg.get("layer")
    if layer is None:
        raise UnlearnError(f"{config} names no RMU layer; pass an `unlearn rmu-baseline` run folder.")
    return weights_target(
        load_file(str(path)), f"blocks.{int(layer)}.hook_resid_post", f"rmu {path.parent.name}"
    )
