"""Clamp SAE features inside the model (the paper's method) and sweep the clamp over a grid.

The intervention of Farrell, Lau & Conmy (arXiv 2410.19278, §3; SAEBench `sae_bench/evals/unlearning/`):
at the hook point, `f = encode(x)`; for each chosen feature i, where `f_i > 0`, replace `f_i` by `f_i'`;
output `decode(f') + (x - decode(f))`, i.e. the reconstruction error is kept, so the model is untouched
wherever no chosen feature fires. Since decode is affine this equals the cheap exact form
`x + (f'_K - f_K) @ W_dec[K]`, which needs only the chosen encoder columns (`SAE.encode_subset`).

Modes (`f_i'` where `f_i > 0`): `clamp` sets it to `scale` (the paper's "negative scaling": `--scale -20`
is `f_i = -multiplier` with multiplier 20), `zero` sets it to 0 (zero ablation, which the paper finds
ineffective), `scale` multiplies it by `scale`.

BOS: positions holding the BOS token are left untouched, as SAEBench does (Gemma's BOS residual is huge
and unlike any text token; editing it shifts every later position). The token ids are read by a
pre-hook on the model itself, so this holds under any caller (our evaluator, lm-eval, `generate`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from unlearn.errors import UnlearnError
from unlearn.hooks import edit, hook_width

log = logging.getLogger(__name__)

Mode = Literal["clamp", "zero", "scale"]
MODES: tuple[str, ...] = get_args(Mode)


def check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise UnlearnError(f"Unknown intervention mode {mode!r}; use one of: {', '.join(MODES)}.")
    return mode  # type: ignore[return-value]


def new_values(f_NK: Tensor, mode: Mode, scale: float) -> Tensor:
    """`f'` for the chosen features: only active entries (`f > 0`) change, as in the paper and SAEBench."""
    active_NK = f_NK > 0
    if mode == "clamp":
        return torch.where(active_NK, torch.full_like(f_NK, scale), f_NK)
    if mode == "zero":
        return torch.where(active_NK, torch.zeros_like(f_NK), f_NK)
    if mode == "scale":
        return torch.where(active_NK, f_NK * scale, f_NK)
    raise UnlearnError(f"Unknown intervention mode {mode!r}; use one of: {', '.join(MODES)}.")


def clamped(
    sae: nn.Module,
    x_ND: Tensor,
    features: Sequence[int] | Tensor,
    mode: Mode,
    scale: float,
    protect_N: Tensor | None = None,
) -> Tensor:
    """The edited activation `x + (f'_K - f_K) @ W_dec[K]` (cheap exact form), in the wider of the two
    dtypes so that a position where nothing changes comes back bit-identical after the caller's cast.

    `protect_N` (bool, shape of `x` without the last dim) marks positions to leave alone (BOS).
    """
    idx_K = torch.as_tensor(features, dtype=torch.long, device=sae.W_dec.device)
    if idx_K.numel() == 0:
        return x_ND
    f_NK = sae.encode_subset(x_ND, idx_K)  # SAE dtype
    df_NK = new_values(f_NK, mode, scale) - f_NK
    if protect_N is not None:
        df_NK = df_NK.masked_fill(protect_N.unsqueeze(-1), 0)
    dx_ND = df_NK @ sae.W_dec[idx_K]  # (..., d_in)
    wide = torch.promote_types(x_ND.dtype, dx_ND.dtype)
    return x_ND.to(wide) + dx_ND.to(wide)


def _bos_id(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    return getattr(config, "bos_token_id", None)


@contextmanager
def clamp(
    model: nn.Module,
    sae: nn.Module,
    features: Sequence[int] | Tensor,
    mode: Mode = "clamp",
    scale: float = -20.0,
    *,
    hook_name: str | None = None,
    skip_bos: bool = True,
    bos_token_id: int | None = None,
) -> Iterator[None]:
    """Edit `sae.hook_name` (or `hook_name`) so that every forward inside the block runs with the chosen
    features clamped. With no features the hook returns the activation object itself (bit-identical).

    `bos_token_id` defaults to the model config's; positions holding it are not edited unless
    `skip_bos=False`.
    """
    mode = check_mode(mode)
    hook = hook_name or getattr(sae, "hook_name", None)
    if not hook:
        raise UnlearnError("The SAE has no hook point recorded; pass --hook (e.g. blocks.6.hook_resid_post).")
    width = hook_width(model, hook)
    if sae.d_in != width:
        raise UnlearnError(
            f"SAE d_in {sae.d_in} != width {width} of {hook}: pass an SAE trained for this model and hook "
            "point (--sae), or the hook point it was trained at (--hook)."
        )
    idx_K = torch.as_tensor(features, dtype=torch.long, device=sae.W_dec.device).flatten()
    if idx_K.numel() and not (0 <= int(idx_K.min()) and int(idx_K.max()) < sae.d_sae):
        raise UnlearnError(f"Feature ids must lie in 0..{sae.d_sae - 1} for this SAE; got {idx_K.tolist()}.")
    bos = bos_token_id if bos_token_id is not None else _bos_id(model)
    seen: dict[str, Tensor | None] = {"input_ids": None}

    def remember_ids(_mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args and torch.is_tensor(args[0]) else None)
        seen["input_ids"] = ids if torch.is_tensor(ids) and not ids.is_floating_point() else None

    def fn(x_BTD: Tensor) -> Tensor:
        if idx_K.numel() == 0:
            return x_BTD
        ids_BT = seen["input_ids"]
        protect_BT = None
        if skip_bos and bos is not None and ids_BT is not None and ids_BT.shape == x_BTD.shape[:-1]:
            protect_BT = (ids_BT == bos).to(x_BTD.device)
        return clamped(sae, x_BTD, idx_K, mode, scale, protect_BT)

    pre = model.register_forward_pre_hook(remember_ids, with_kwargs=True)
    try:
        with edit(model, hook, fn):
            yield
    finally:
        pre.remove()
