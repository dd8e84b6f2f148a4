"""Hook points: read and edit activations of a Hugging Face decoder through forward hooks.

Names follow TransformerLens (`blocks.6.hook_resid_post`) because SAE releases are keyed by them; the
mapping onto modules is data (`hook_points.yaml`). Every context manager removes its hooks in `finally`,
and every edit returns a tensor of the activation's dtype (transformers 5 layers return tensors).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

import yaml
from torch import Tensor, nn

from unlearn.errors import UnlearnError

_NAME_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def live_hooks(model: nn.Module) -> list[str]:
    """Modules of `model` carrying a forward (pre-)hook that can change its computation: everything but
    transformers' output-capturing hooks (`transformers.utils.output_capturing`), which stay installed
    after the first `output_hidden_states=True` call and only record."""

    def ours(hook) -> bool:
        return not (getattr(hook, "__module__", None) or "").startswith("transformers.")

    return [
        name
        for name, module in model.named_modules()
        if any(ours(h) for h in (*module._forward_hooks.values(), *module._forward_pre_hooks.values()))
    ]


@cache
def hook_kinds() -> dict[str, dict[str, str]]:
    return yaml.safe_load(resources.files("unlearn").joinpath("hook_points.yaml").read_text())


@dataclass(frozen=True)
class HookPoint:
    name: str
    layer: int
    module: str
    """Path relative to `layers[layer]`; empty for the layer itself."""
    side: Literal["input", "output"]


def parse_hook_name(name: str) -> HookPoint:
    match = _NAME_RE.match(name)
    kinds = hook_kinds()
    if not match or match.group(2) not in kinds:
        raise UnlearnError(
            f"Unknown hook point {name!r}. Use blocks.<layer>.<kind> with kind one of: {', '.join(kinds)} "
            "(e.g. blocks.6.hook_resid_post)."
        )
    kind = kinds[match.group(2)]
    return HookPoint(name=name, layer=int(match.group(1)), module=kind["module"], side=kind["side"])


def text_config(model: nn.Module):
    """The language model's config, also inside multimodal wrappers (transformers' `get_text_config`)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's layer list, found without per-model branches: the first ModuleList whose length
    is the config's layer count (works for `model.model.layers` and multimodal wrappers alike)."""
    n_layers = getattr(text_config(model), "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise UnlearnError(f"Could not find the decoder layers of {type(model).__name__} (expected {n_layers}).")


def resolve(model: nn.Module, name: str) -> tuple[HookPoint, nn.Module]:
    """Hook point and the module it hooks; an out-of-range layer is a clear error."""
    point = parse_hook_name(name)
    layers = decoder_layers(model)
    if not 0 <= point.layer < len(layers):
        raise UnlearnError(
            f"Layer {point.layer} of {name!r} is out of range: the model has {len(layers)} layers "
            f"(0..{len(layers) - 1})."
        )
    module = layers[point.layer].get_submodule(point.module) if point.module else layers[point.layer]
    return point, module


def hook_device(model: nn.Module, name: str):
    """The device the activation at `name` lives on: where accelerate runs the hooked layer under a
    `device_map` (its hook's `execution_device`), else where its weights are. An SAE edit at `name`
    keeps its tensors there, so a model spread over devices needs no transfer at the hook."""
    point, module = resolve(model, name)
    layer = decoder_layers(model)[point.layer]
    for m in (module, layer):
        placed = getattr(getattr(m, "_hf_hook", None), "execution_device", None)
        if placed is not None:
            import torch

            return torch.device(placed)  # an index means that accelerator
    return next(layer.parameters()).device


def hook_width(model: nn.Module, name: str) -> int:
    """Width of the activation at a hook point (what an SAE's `d_in` must equal)."""
    point, module = resolve(model, name)
    if isinstance(module, nn.Linear):
        return module.in_features if point.side == "input" else module.out_features
    return text_config(model).hidden_size


def check_compatible(
    sae, d_model_at_hook: int, hook_name: str, model_name: str | None = None, *, warn_moved: bool = True
) -> None:
    """The one d_in check: fail early, with a fix, when an SAE is put on a hook point of another width
    (it would otherwise fail deep inside a matmul, or silently broadcast). A differing `sae.hook_name`
    only warns: Gemma Scope SAEs of the pretrained model are used on the -it model on purpose."""
    if sae.d_in != d_model_at_hook:
        where = f"{hook_name} of {model_name}" if model_name else hook_name
        raise UnlearnError(
            f"SAE d_in {sae.d_in} != width {d_model_at_hook} of {where}: pass an SAE trained for this model "
            "and hook point (--sae), or the hook point it was trained at (--hook)."
        )
    if warn_moved and getattr(sae, "hook_name", None) and sae.hook_name != hook_name:
        logging.getLogger(__name__).warning(
            "SAE was trained at %s but is applied at %s", sae.hook_name, hook_name
        )


def sae_site(model: nn.Module, sae: nn.Module, feature_ids, hook_name: str | None) -> tuple[str, Tensor]:
    """The hook point an SAE edit acts at (`hook_name`, else the SAE's) and its feature ids as a long
    tensor on the SAE's device, after checking the SAE fits that point and the ids fit the SAE: the one
    check every clamp and gate runs before installing a hook."""
    import torch

    hook = hook_name or getattr(sae, "hook_name", None)
    if not hook:
        raise UnlearnError("The SAE has no hook point recorded; pass --hook (e.g. blocks.6.hook_resid_post).")
    check_compatible(sae, hook_width(model, hook), hook, warn_moved=False)
    idx_K = torch.as_tensor(feature_ids, dtype=torch.long, device=sae.W_dec.device).flatten()
    if idx_K.numel() and not (0 <= int(idx_K.min()) and int(idx_K.max()) < sae.d_sae):
        raise UnlearnError(f"Feature ids must lie in 0..{sae.d_sae - 1} for this SAE; got {idx_K.tolist()}.")
    return hook, idx_K


def _install(module: nn.Module, side: str, fn: Callable[[Tensor], Tensor | None]):
    """Register `fn(act) -> new act | None` on a module's input or output; returns the handle."""
    if side == "output":

        def out_hook(_mod, _args, out):
            act = out[0] if isinstance(out, tuple) else out
            new = fn(act)
            if new is None:
                return None
            new = new.to(act.device, act.dtype)  # the hooked module's device and dtype
            return (new, *out[1:]) if isinstance(out, tuple) else new

        return module.register_forward_hook(out_hook)

    def in_hook(_mod, args, kwargs):
        act = args[0] if args else kwargs["hidden_states"]
        new = fn(act)
        if new is None:
            return None
        new = new.to(act.device, act.dtype)
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    return module.register_forward_pre_hook(in_hook, with_kwargs=True)


@contextmanager
def edit(model: nn.Module, name: str, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Replace the activation at `name` by `fn(act)` (same shape) for every forward inside the block."""
    point, module = resolve(model, name)
    handle = _install(module, point.side, fn)
    try:
        yield
    finally:
        handle.remove()


class _StopForward(Exception):
    """Raised inside a hook to end a forward once every requested activation is captured."""


@contextmanager
def edit_with_inputs(model: nn.Module, name: str, fn: Callable[[Tensor, dict], Tensor]) -> Iterator[None]:
    """`edit`, with `fn(act, inputs)` also given the decoder body's keyword arguments of the current
    forward (token ids always under `input_ids`, None when embeddings were passed; `past_length` = tokens
    already in the KV cache when the forward began, read before the layers fill it): what a hook needs to
    leave BOS alone, tell real tokens from padding, or know a generation step from a new prompt. A pre-hook on the decoder body records them,
    since every forward runs it, the scorers' head-less ones too; both hooks go in `finally`."""
    import torch

    seen: dict = {"input_ids": None}

    def remember(_mod, args, kwargs):
        seen.clear()
        seen.update(kwargs)
        ids = kwargs.get("input_ids", args[0] if args and torch.is_tensor(args[0]) else None)
        seen["input_ids"] = ids if torch.is_tensor(ids) and not ids.is_floating_point() else None
        past = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5 / 4 name
        seen["past_length"] = int(past.get_seq_length()) if hasattr(past, "get_seq_length") else 0

    body = model.get_decoder() if hasattr(model, "get_decoder") else model
    pre = body.register_forward_pre_hook(remember, with_kwargs=True)
    try:
        with edit(model, name, lambda act: fn(act, seen)):
            yield
    finally:
        pre.remove()


@contextmanager
def capture(
    model: nn.Module, names: Sequence[str], *, detach: bool = True, stop: bool = False
) -> Iterator[dict[str, Tensor]]:
    """Record activations at `names` into the yielded dict on each forward.

    With `stop=True` the forward ends right after the deepest requested activation is recorded (later
    layers and the output head never run); call the model through `forward_to` in that case, which
    swallows the internal stop signal.
    """
    store: dict[str, Tensor] = {}
    handles = []

    def recorder(key: str):
        def fn(act: Tensor) -> None:
            store[key] = act.detach() if detach else act
            if stop and len(store) == len(names):
                raise _StopForward

        return fn

    try:
        for key in names:
            point, module = resolve(model, key)
            handles.append(_install(module, point.side, recorder(key)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def forward_to(
    model: nn.Module, names: Sequence[str], *, detach: bool = True, **inputs: Tensor
) -> dict[str, Tensor]:
    """Activations at `names` from a forward that stops after the deepest of them.

    This is what activation statistics, SAE training and RMU need: nothing after the hooked layer, and
    in particular not Gemma's 256k-token output layer, which dominates CPU time.
    """
    with capture(model, names, detach=detach, stop=True) as store:
        try:
            model(**inputs, use_cache=False)
        except _StopForward:
            pass
    missing = [n for n in names if n not in store]
    if missing:
        raise RuntimeError(f"forward finished without reaching hook points {missing}")
    return dict(store)
