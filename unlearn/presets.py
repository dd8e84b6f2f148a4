"""Model presets (`presets.yaml`): the single place that knows model-specific facts."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from unlearn.errors import UnlearnError

DEFAULT_PRESET = "gemma-3-270m"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: str
    """Hub id, local folder, `.gguf` file or `embedded:<name>`."""
    dtype: str = "auto"
    attn_implementation: str | None = None
    chat_template: bool = False
    """Whether prompts go through the tokenizer's chat template (instruction-tuned models)."""
    sae: str | None = None
    """SAE spec for `unlearn.sae.loaders.load_sae` (registry id, local folder, npz or `shipped:...`)."""
    hook_point: str | None = None
    clamp_unit: str = "absolute"
    """`intervene`'s default clamp unit: absolute (paper numbers) or typical (× mean active activation)."""
    eval: dict[str, Any] = field(default_factory=dict)
    select: dict[str, Any] = field(default_factory=dict)
    rmu: dict[str, Any] = field(default_factory=dict)
    demo: dict[str, Any] = field(default_factory=dict)
    """`unlearn demo` settings chosen on the dev split (e.g. `scales`)."""


@cache
def _raw_presets() -> dict[str, dict]:
    text = resources.files("unlearn").joinpath("presets.yaml").read_text()
    return yaml.safe_load(text)


def preset_names() -> list[str]:
    return list(_raw_presets())


def get_preset(name: str) -> Preset:
    raw = _raw_presets()
    if name not in raw:
        close = difflib.get_close_matches(name, raw, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnlearnError(f"Unknown preset {name!r}.{hint} Known presets: {', '.join(raw)}.")
    return Preset(name=name, **raw[name])
