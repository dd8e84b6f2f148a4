"""One resolved run setup: what a command's `--preset`/`--model`/`--sae`/`--hook` flags mean, decided once.

The rule, the same for every command (README, "Presets"):

- `--preset P`: P's settings (model, dtype, SAE, hook point, evaluation, selection text, RMU, demo);
- `--preset P --model M`: P's settings with model M loaded instead of P's model;
- `--model M` alone: generic defaults (no preset); a setting a command needs that nothing supplies
  (the RMU layer, the SAE, the evaluation tasks) is an error naming the flag to pass;
- neither: the default preset (`gemma-3-270m`, the embedded model).

`resolve_setup` is the only place that looks a preset up for a run; every `run_*` builds its `Setup`
once (`setup_of(cfg)`) and reads model-specific facts from it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from unlearn.checks import check_model_path
from unlearn.errors import UnlearnError
from unlearn.hooks import HookPoint, parse_hook_name
from unlearn.presets import DEFAULT_PRESET, Preset, get_preset, preset_names


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a hub id, local folder, `.gguf` file or `embedded:<name>`, and how."""

    source: str
    dtype: str = "auto"
    """The preset's dtype (`auto`: bf16 on CUDA, fp32 on CPU)."""
    attn_implementation: str | None = "eager"
    chat_template: bool | None = None
    """Whether prompts go through the chat template (None: whether the tokenizer has one)."""


@dataclass(frozen=True)
class Setup:
    """A command's resolved settings: the preset whose settings apply (None: generic defaults), the model
    to load, and the flags that override the preset's SAE and hook point."""

    preset: Preset | None
    model: ModelSpec
    name: str
    """How runs record the model: the preset's name when its own model is loaded, else `--model`."""
    device: str | None = None
    dtype: str | None = None
    """An explicit `--dtype` (wins over `model.dtype`)."""
    device_map: str | None = None
    """`--device-map` (`auto`: accelerate spreads the layers over the GPUs, then CPU memory)."""
    sae: str | None = None
    """`--sae` (registry id, SAELens folder, params.npz); the preset's otherwise (`sae_spec`)."""
    hook: HookPoint | None = None
    """`--hook`, parsed once; else the SAE's recorded hook point, else the preset's (`hook_for`)."""

    @property
    def preset_name(self) -> str | None:
        return self.preset.name if self.preset else None

    def _section(self, name: str) -> dict[str, Any]:
        return dict(getattr(self.preset, name)) if self.preset else {}

    @property
    def eval(self) -> dict[str, Any]:
        """The preset's evaluation settings (`EvalConfig` fields; none without a preset)."""
        return self._section("eval")

    @property
    def select(self) -> dict[str, Any]:
        """The preset's selection text sources and rule."""
        return self._section("select")

    @property
    def rmu(self) -> dict[str, Any]:
        """The preset's RMU settings (`RMUConfig` fields)."""
        return self._section("rmu")

    @property
    def demo(self) -> dict[str, Any]:
        """The preset's demo point (chosen on the dev split)."""
        return self._section("demo")

    @property
    def clamp_unit(self) -> str:
        """`intervene`'s default clamp unit: the preset's, else absolute."""
        return self.preset.clamp_unit if self.preset else "absolute"

    def on(self, lm: Any) -> Setup:
        """These flags on the model actually loaded: `lm.setup`'s preset and model (a caller such as
        `demo` or a test may pass a model loaded for its own setup), this setup's --sae and --hook."""
        setup = getattr(lm, "setup", None)
        if setup is None or setup is self:
            return self
        return replace(setup, sae=self.sae, hook=self.hook)

    def sae_spec(self, *fallbacks: str | None) -> str | None:
        """`--sae`, else the first given fallback (e.g. a selection's SAE), else the preset's."""
        for spec in (self.sae, *fallbacks, self.preset.sae if self.preset else None):
            if spec:
                return spec
        return None

    def hook_for(self, *fallbacks: str | None) -> HookPoint | None:
        """`--hook`, else the first given fallback (the SAE's or a selection's hook), else the preset's."""
        if self.hook is not None:
            return self.hook
        for name in (*fallbacks, self.preset.hook_point if self.preset else None):
            if name:
                return parse_hook_name(name)
        return None


def resolve_setup(
    preset: str | None = None,
    model: str | None = None,
    *,
    sae: str | None = None,
    hook: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    device_map: str | None = None,
) -> Setup:
    """The module docstring's rule. Bad flags (an unknown preset, a local --model path that does not exist,
    a malformed --hook) fail here, before anything loads."""
    if model is not None and model in preset_names():
        raise UnlearnError(f"--model {model!r} is a preset name: pass --preset {model}.")
    check_model_path(model)
    p: Preset | None = get_preset(preset) if preset is not None else None
    if p is None and model is None:
        p = get_preset(DEFAULT_PRESET)
    point = parse_hook_name(hook) if hook else None
    if p is None:
        return Setup(preset=None, model=ModelSpec(source=model), name=model, device=device, dtype=dtype,
                     sae=sae, hook=point, device_map=device_map)  # fmt: skip
    spec = ModelSpec(
        source=model or p.model,
        dtype=p.dtype,
        attn_implementation=p.attn_implementation,
        chat_template=p.chat_template,
    )
    return Setup(preset=p, model=spec, name=model or p.name, device=device, dtype=dtype, sae=sae, hook=point,
                 device_map=device_map)  # fmt: skip


def setup_of(cfg: Any) -> Setup:
    """The setup of a command config: its `preset`, `model`, `sae`, `hook`, `device`, `dtype` and
    `device_map` fields (those it has), resolved by `resolve_setup`."""
    get = lambda name: getattr(cfg, name, None)  # noqa: E731
    return resolve_setup(get("preset"), get("model"), sae=get("sae"), hook=get("hook"), device=get("device"),
                         dtype=get("dtype"), device_map=get("device_map"))  # fmt: skip
