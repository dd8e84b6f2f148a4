"""Unlearned states: a method as a context-manager factory over a loaded model.

Attacks receive `Target(model) -> ContextManager`: inside the block the model is unlearned (a clamp hook is
installed, or RMU's trained matrices are swapped in), and on exit it is exactly as before (hooks removed,
original weights copied back). `Target` also carries what the direction attack needs: the edited hook
point and, for SAE edits, the decoder rows whose span the edit moves activations in.

`target_from_spec` turns a `--target` string into a Target:

- `intervene:<intervene run folder>/<point id>` rebuilds exactly the hook an `unlearn intervene` point
  was scored with (static clamp with its features, mode and per-feature clamp values, or the gated clamp
  from the point's recorded gate; a random-direction control with its seeded rotation), through
  `unlearn.clamp.intervene.feature_edit` / `unlearn.clamp.gates.gated` themselves;
- `rmu:<run>` swaps in an `unlearn rmu-baseline` run's trained matrices;
- `clamp` clamps the top features of a select-features run.
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
    spec: str | None = None
    """The `--target` string this state was built from (recorded in the run's config)."""
    info: dict | None = None
    """What was rebuilt (point id, mode, features, gate kind, ...), recorded in the run's config."""

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
    feature_ids: Sequence[int],
    mode: str = "clamp",
    scale: float = -20.0,
    *,
    hook: str | None = None,
    name: str | None = None,
    gate: Callable[[nn.Module], AbstractContextManager] | None = None,
) -> Target:
    """The paper's static clamp (arXiv 2410.19278) as a Target; `gate(model)`, when given, replaces the
    plain clamp by a gated one (its context manager must install the hook and the gate together)."""
    from unlearn.clamp.intervene import feature_edit

    hook = hook or sae.hook_name
    feats = [int(f) for f in feature_ids]

    @contextmanager
    def enter(model: nn.Module) -> Iterator[None]:
        inner = gate(model) if gate else feature_edit(model, sae, feats, mode, scale, hook_name=hook)  # type: ignore[arg-type]
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
    from unlearn.rmu.train import resid_hook
    from unlearn.rmu.weights import weights_path

    path = weights_path(run)
    config = path.parent / "config.json"
    cfg = read_json(config) if config.is_file() else {}
    layer = cfg.get("layer")
    if layer is None:
        raise UnlearnError(f"{config} names no RMU layer; pass an `unlearn rmu-baseline` run folder.")
    return weights_target(
        load_file(str(path)), resid_hook(int(layer)), f"rmu {path.parent.name}"
    )


def _point_files(path: str | Path) -> tuple[Path, Path]:
    """(run folder, point JSON) of `<run>/<point id>`, `<run>/points/<point id>.json` or
    `<run id>/<point id>` under results/intervene/."""
    from unlearn.results import results_dir

    p = Path(path)
    if p.suffix == ".json" and p.parent.name == "points":
        return p.parent.parent, p
    candidates = [p.parent, results_dir() / "intervene" / p.parent]
    for run in candidates:
        point = run / "points" / f"{p.name}.json"
        if point.is_file():
            return run, point
    tried = ", ".join(str(c / "points" / f"{p.name}.json") for c in candidates)
    raise UnlearnError(
        f"No intervene point {str(path)!r} (looked for {tried}); pass "
        "intervene:<results/intervene/RUN>/<point id>, a point id from that run's points/ folder."
    )


def intervene_target(path: str | Path, lm, sae: nn.Module | None = None) -> Target:
    """The hook an `unlearn intervene` point was scored with, rebuilt from its run folder.

    The run's `config.json` names the SAE and hook point; the point's JSON its features, mode, clamp
    values (`clamp_unit` typical: one per feature), gate and control. The SAE is loaded as intervene
    loaded it unless `sae` is given (the same SAE already in memory). The hook itself is installed by
    `unlearn.clamp.intervene.feature_edit` or `unlearn.clamp.gates.gated`, so it is the scored hook, not a re-implementation.
    """
    from unlearn.clamp.controls import random_rotation
    from unlearn.clamp.gates import Gate, gated
    from unlearn.clamp.intervene import check_mode, feature_edit
    from unlearn.results import is_complete, read_json

    run_dir, point_file = _point_files(path)
    cfg = read_json(run_dir / "config.json")
    point = read_json(point_file)
    recorded = cfg.get("model")
    if recorded and recorded != lm.name:
        raise UnlearnError(
            f"Intervene run {run_dir} was made with model {recorded!r}, not {lm.name!r}; load that model "
            "(--preset/--model) to attack its points."
        )
    if sae is None:
        from unlearn.clamp.select import resolve_sae

        sae, _, hook = resolve_sae(lm.setup, lm.model, cfg.get("sae"), cfg.get("hook"))
    hook = cfg.get("hook") or sae.hook_name
    mode = check_mode(point["mode"])
    feats = [int(f) for f in point["features"]]
    values = point.get("clamp_values")
    if mode == "clamp" and point.get("clamp_unit") == "typical":
        value: float | Tensor = torch.tensor(values, dtype=torch.float64)
    else:
        value = float(point.get("scale") or 0.0)
    dirs_KD = None
    if point.get("control") == "random-direction":
        rotation_DD = random_rotation(
            sae.d_in, int(point.get("seed") or 0), dtype=sae.W_dec.dtype, device=sae.W_dec.device
        )
        dirs_KD = sae.W_dec[torch.as_tensor(feats, dtype=torch.long, device=sae.W_dec.device)] @ rotation_DD
    gate = Gate.from_json(point["gate"]) if point.get("gate") else None
    if gate is not None and list(gate.features) != feats:
        raise UnlearnError(f"Point {point_file} records a gate over other features than its own.")

    @contextmanager
    def enter(model: nn.Module) -> Iterator[None]:
        if gate is not None:
            inner = gated(model, sae, gate, hook_name=hook, directions_KD=dirs_KD)
        else:
            inner = feature_edit(model, sae, feats, mode, value, hook_name=hook, directions_KD=dirs_KD)
        with frozen(sae), inner:
            yield

    basis = (
        dirs_KD
        if dirs_KD is not None
        else sae.W_dec[torch.as_tensor(feats, dtype=torch.long, device=sae.W_dec.device)]
    )
    pid = point_file.stem
    info = {"run": str(run_dir), "complete": is_complete(run_dir), "point": pid, "mode": mode,
            "features": feats, "clamp_unit": point.get("clamp_unit"), "scale": point.get("scale"),
            "gate": gate.kind if gate else None, "control": point.get("control"), "sae": cfg.get("sae")}  # fmt: skip
    if not is_complete(run_dir):
        import logging

        logging.getLogger(__name__).warning(
            "intervene run %s is not complete; attacking its point %s", run_dir, pid
        )
    return Target(f"{run_dir.name}/{pid}", "hook", enter, hook, basis.detach().T.clone(), info=info)


def target_from_spec(
    spec: str,
    lm,
    sae: nn.Module | None = None,
    *,
    features: str | None = None,
    topic: str | None = None,
    n_features: int = 20,
    mode: str = "clamp",
    scale: float = -20.0,
) -> Target:
    """The unlearned state named by a `--target` string on the loaded model `lm`:
    `intervene:<run folder>/<point id>`, `rmu:<run>` or `clamp` (the top `n_features` of the
    select-features run `features`, clamped with `mode` / `scale`). `sae` is the SAE already in memory
    (intervene and clamp targets; default: loaded as the run / selection names it)."""
    if spec.startswith("intervene:"):
        target = intervene_target(spec.removeprefix("intervene:"), lm, sae)
    elif spec.startswith("rmu:"):
        target = rmu_target(spec.removeprefix("rmu:"))
    elif spec == "clamp":
        from unlearn.clamp.select import read_selection, resolve_sae

        selection = read_selection(features, topic)
        hook = selection.hook
        if sae is None:
            sae, _, hook = resolve_sae(lm.setup, lm.model, selection.sae, selection.hook)
        target = clamp_target(sae, selection.features[:n_features], mode, scale, hook=hook or sae.hook_name)
    else:
        raise UnlearnError(
            f"Unknown --target {spec!r}; use intervene:<results/intervene/RUN>/<point id>, "
            "rmu:<results/rmu-baseline/RUN> or clamp."
        )
    target.spec = spec
    return target
