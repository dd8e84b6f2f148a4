"""Finite-or-fail checks and flag validation, so that nothing false is ever reported as a result.

A NaN log-likelihood makes `argmax` pick choice 0, so accuracy silently becomes "share of questions
whose answer is A"; a NaN SAE or RMU weight does the same one step earlier. Every score, loss and saved
weight passes through `require_finite`, which stops the run with a message naming what and where
(the run lifecycle in `unlearn.results` then marks the folder failed). Flags are checked before any
model loads, so a bad value never leaves a half-made run behind.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from unlearn.errors import UnlearnError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
"""dtype names that flags and SAE configs use (the one table; `--dtype`, `--save-dtype`, cfg.json)."""
DTYPE_NAMES = {dtype: name for name, dtype in reversed(DTYPES.items())}
"""Each dtype's first (full) name in `DTYPES`: what a saved SAE's cfg.json records."""


def dtype_named(name: str, flag: str = "--dtype", allowed: tuple[str, ...] | None = None) -> torch.dtype:
    """The torch dtype a flag names, or an error listing the names it accepts."""
    names = allowed or tuple(DTYPES)
    if name not in names:
        raise UnlearnError(f"{flag} must be one of {', '.join(names)}, got {name!r}")
    return DTYPES[name]


class NonFiniteError(UnlearnError):
    """A score, loss or weight is NaN or infinite: the numbers built on it would be meaningless."""


def _count_bad(value) -> tuple[int, int]:
    """(non-finite count, total) for a tensor, array-like or float."""
    if torch.is_tensor(value):
        t = value.detach()
        if not (t.is_floating_point() or t.is_complex()):
            return 0, t.numel()
        return int((~torch.isfinite(t)).sum()), t.numel()
    if isinstance(value, (float, int)):
        return (0 if math.isfinite(value) else 1), 1
    t = torch.as_tensor(value)
    return _count_bad(t)


def require_finite(value, what: str, where: str = "", hint: str = "") -> None:
    """Raise `NonFiniteError` naming `what` (and `where`) if `value` holds a NaN or infinity."""
    bad, total = _count_bad(value)
    if bad:
        at = f" in {where}" if where else ""
        raise NonFiniteError(
            f"{what}{at} is not finite ({bad} of {total} values are NaN or infinite); "
            f"{hint or 'nothing was reported from it'}"
        )


def require_finite_tensors(
    tensors: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]], where: str, hint: str = ""
) -> None:
    """`require_finite` over named tensors (a state dict, an SAE's weights), naming the first bad one."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for name, t in items:
        require_finite(t, name, where, hint)


# ---------------------------------------------------------------- flags


def finite_float(value: float, flag: str) -> float:
    """A float flag must be finite (`--scale nan` would turn every clamp into NaN activations)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UnlearnError(f"{flag} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise UnlearnError(f"{flag} must be a finite number, got {value!r}")
    return x


def finite_floats(values: Iterable[float] | None, flag: str) -> list[float] | None:
    return None if values is None else [finite_float(v, flag) for v in values]


def positive_int(value: int | None, flag: str, *, minimum: int = 1) -> int | None:
    """A count flag (`--n-features`, `--limit`, `--batch-size`...) must be ≥ `minimum` (None = unset)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnlearnError(f"{flag} must be a whole number ≥ {minimum}, got {value!r}")
    if value < minimum:
        raise UnlearnError(f"{flag} must be ≥ {minimum}, got {value}")
    return value


def positive_ints(values: Iterable[int] | None, flag: str, *, minimum: int = 1) -> list[int] | None:
    return None if values is None else [positive_int(v, flag, minimum=minimum) for v in values]


def feature_ids(values: Iterable[int] | None, flag: str = "--feature-ids") -> list[int] | None:
    """Feature ids are non-negative and distinct (the upper bound is checked against the SAE's width)."""
    if values is None:
        return None
    ids = list(values)
    if not ids:
        raise UnlearnError(f"{flag} is empty: pass ids such as {flag} 12,7,301")
    neg = [i for i in ids if i < 0]
    if neg:
        raise UnlearnError(f"{flag} must be ≥ 0, got {neg[:5]}")
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise UnlearnError(f"{flag} lists {dup[:5]} more than once; pass each feature once")
    return ids


def existing_path(path: str | Path | None, flag: str, *, what: str = "file or folder") -> Path | None:
    """A path flag that must exist now (before any model is loaded)."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise UnlearnError(f"{flag} {str(path)!r}: no such {what}")
    return p


def writable_dir(path: str | Path, flag: str) -> Path:
    """An output folder we can create and write into, checked before the work rather than after it."""
    p = Path(path)
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UnlearnError(f"{flag} {str(path)!r}: {probe} is a file, not a folder")
    try:  # a real write: os.access says yes to root even on a read-only file system
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UnlearnError(
            f"{flag} {str(path)!r}: {probe} is not writable ({e.strerror}); pass a folder you can write to"
        ) from None
    return p


def check_model_path(model: str | None) -> None:
    """A `--model` that is plainly a local path (absolute, relative, `~`, `.gguf`, or deeper than the
    hub's `org/name`) must exist; otherwise the hub client answers with a confusing "Repo id" message."""
    if not model:
        return
    looks_local = model.startswith(("/", ".", "~")) or model.endswith(".gguf") or model.count("/") > 1
    if looks_local and not Path(model).expanduser().exists():
        raise UnlearnError(
            f"--model {model!r}: no such local file or folder; pass an existing folder / .gguf file, "
            "a hub id such as google/gemma-2-2b-it, or a --preset"
        )


def model_context(model) -> int | None:
    """The longest sequence the model was built for (`max_position_embeddings`), or None if unknown."""
    from unlearn.hooks import text_config

    n = getattr(text_config(model), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def check_question_lengths(
    questions, tokenizer, *, protocol: str, chat_template: bool, limit: int | None
) -> None:
    """A question whose prompt is longer than `limit` tokens is an error naming its file and row, raised
    before scoring (otherwise the forward tries to allocate an attention matrix of many GB)."""
    if not limit:
        return
    from unlearn.eval.prompts import (
        cloze_context,
        cloze_continuation,
        encode_pair,
        encode_prompt,
        letter_prompt,
    )

    for q in questions:
        if protocol == "cloze":
            longest = max(q.choices, key=len)
            ctx, cont = encode_pair(cloze_context(q.question), cloze_continuation(longest), tokenizer)
            n = len(ctx) + len(cont)
        else:
            n = len(encode_prompt(letter_prompt(q, tokenizer, chat_template=chat_template), tokenizer))
        if n > limit:
            raise UnlearnError(
                f"{getattr(q, 'source', '?')}: row {getattr(q, 'index', 0) + 1}: the question's prompt is {n} "
                f"tokens, longer than the model's context of {limit}; shorten or drop that question"
            )
