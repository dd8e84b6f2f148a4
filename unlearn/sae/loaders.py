"""SAE files on disk and the pretrained registry (`sae_releases.yaml`), behind one entry point `load_sae`.

Formats, one loader each with the same signature (`LOADERS`, as SAELens keeps its loaders in a dict):
- `gemma_scope_npz`: Gemma Scope `params.npz` (`W_enc [d_in, d_sae]`, `W_dec [d_sae, d_in]`, `b_enc`, `b_dec`,
  `threshold`); JumpReLU without `b_dec` subtraction (Lieberum et al. 2024; SAELens `gemma_2_sae_huggingface_loader`).
- `saelens`: a SAELens folder, `cfg.json` + `sae_weights.safetensors`, both the 6.x config (`metadata.hook_name`)
  and the pre-6.0 one (`hook_point`, `activation_fn_str`) that jbloom's gemma-2b-it SAEs use.
- `farrell_pt`: the authors' own `torch.save({"cfg": sae.config.Config, "state_dict": ...})` files
  (efarrell1/unlearning_with_saes, `sae/sparse_autoencoder.py`), read with torch's weights-only unpickler and an
  inert stand-in for their config class, so loading runs no pickled code.

Every hub download goes through `_download` (tests patch it to serve fixture files).
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import zipfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from unlearn.checks import DTYPES, require_finite_tensors
from unlearn.errors import UnlearnError
from unlearn.paths import SHIPPED, resolve_path
from unlearn.sae.model import ARCHITECTURES, SAE, SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME

logger = logging.getLogger(__name__)

Device = torch.device | str | None
_LOCAL_HINT = "pass a local SAE instead (--sae path/to/params.npz, or a SAELens folder with cfg.json + sae_weights.safetensors)"


# --- building an SAE from named arrays ------------------------------------------------------------------


def _from_tensors(
    tensors: dict[str, Any],
    source: Path | str,
    *,
    architecture: str,
    k: int | None = None,
    apply_b_dec_to_input: bool,
    hook_name: str | None,
    dtype: torch.dtype | None,
    device: Device,
) -> SAE:
    """Check names and shapes, then build the SAE; every failure names the file and the array."""
    needed = ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if architecture == "jumprelu" else [])
    for key in needed:
        if key not in tensors:
            raise UnlearnError(
                f"{source} has no array {key!r} (it has: {', '.join(sorted(tensors))}); "
                f"a {architecture} SAE needs {', '.join(needed)}"
            )
    t = {
        key: torch.as_tensor(np.asarray(tensors[key]) if not torch.is_tensor(tensors[key]) else tensors[key])
        for key in needed
    }
    if t["W_enc"].ndim != 2:
        raise UnlearnError(f"{source}: W_enc must be 2-D (d_in, d_sae), got shape {tuple(t['W_enc'].shape)}")
    d_in, d_sae = t["W_enc"].shape
    expected = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}
    for key in needed[1:]:
        if tuple(t[key].shape) != expected[key]:
            raise UnlearnError(
                f"{source}: {key} has shape {tuple(t[key].shape)} but W_enc {(d_in, d_sae)} "
                f"implies {expected[key]}; the file is inconsistent or not an SAE"
            )
    require_finite_tensors(
        {k: t[k] for k in needed}, str(source), "the SAE file is damaged; retrain or re-download it"
    )
    dtype = dtype or t["W_enc"].dtype
    sae = SAE(
        d_in,
        d_sae,
        architecture,
        k=k,
        apply_b_dec_to_input=apply_b_dec_to_input,  # type: ignore[arg-type]
        hook_name=hook_name,
        dtype=dtype,
        device=device,
    )
    with torch.no_grad():
        for key in needed:
            getattr(sae, key).copy_(t[key])
    return sae


# --- the three formats ----------------------------------------------------------------------------------


def load_gemma_scope_npz(
    path: str | Path, *, hook_name: str | None = None, device: Device = None, dtype: torch.dtype | None = None
) -> SAE:
    """A Gemma Scope `params.npz`: JumpReLU, `apply_b_dec_to_input=False` (Gemma Scope, arXiv 2408.05147)."""
    path = Path(path)
    try:
        with np.load(path) as data:
            # SAELens maps a lowercase `w_enc` to `W_enc`; accept both spellings.
            arrays = {("W_" + key[2:] if key.startswith("w_") else key): data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UnlearnError(f"cannot read {path} as a Gemma Scope params.npz ({e}); re-download it") from e
    return _from_tensors(
        arrays,
        path,
        architecture="jumprelu",
        apply_b_dec_to_input=False,
        hook_name=hook_name,
        dtype=dtype,
        device=device,
    )


def _read_json(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UnlearnError(f"cannot read the SAE config {path} ({e})") from e
    if not isinstance(cfg, dict):
        raise UnlearnError(f"{path} is not a SAELens cfg.json (expected a JSON object)")
    return cfg


def _load_saelens_files(
    cfg_path: Path, weights_path: Path, *, hook_name: str | None, device: Device, dtype: torch.dtype | None
) -> SAE:
    cfg = _read_json(cfg_path)
    meta = cfg.get("metadata") or {}
    # Pre-6.0 configs (jbloom's) name the activation `activation_fn_str` and keep topk's k in kwargs.
    act = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    arch = cfg.get("architecture") or ("topk" if act == "topk" else "standard")
    if arch not in ARCHITECTURES or (arch == "standard" and act not in ("relu", None)):
        what = arch if arch not in ARCHITECTURES else f"standard with activation {act!r}"
        raise UnlearnError(
            f"{cfg_path}: SAE architecture {what!r} is not supported; "
            f"supported: {', '.join(ARCHITECTURES)} (ReLU)"
        )
    norm = cfg.get("normalize_activations")
    if norm in ("constant_norm_rescale", "layer_norm"):
        raise UnlearnError(
            f"{cfg_path}: normalize_activations={norm!r} is not supported (it makes decode depend "
            "on the input); use an SAE with normalize_activations 'none'"
        )
    if norm in ("expected_average_only_in", True):
        # SAELens also runs these as identity unless its registry supplies a scaling factor to fold in.
        logger.warning("%s: normalize_activations=%r is treated as 'none', as SAELens does", cfg_path, norm)
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise UnlearnError(f"{cfg_path}: topk with rescale_acts_by_decoder_norm=true is not supported")
    if not weights_path.exists():
        raise UnlearnError(f"SAE weights {weights_path} are missing next to {cfg_path}")
    try:
        tensors = load_file(weights_path)
    except Exception as e:  # safetensors raises its own error types for truncated/garbled headers
        raise UnlearnError(f"cannot read {weights_path} as safetensors ({e}); re-download it") from e
    if "threshold" not in tensors and "log_threshold" in tensors:  # SAELens' training-time parameter
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    scale = tensors.pop("scaling_factor", tensors.pop("finetuning_scaling_factor", None))
    if scale is not None and not torch.allclose(scale, torch.ones_like(scale)):
        # SAELens multiplies f by this before decoding; folding it into W_dec keeps x_hat identical.
        logger.warning("%s: folding a finetuning scaling factor into W_dec", weights_path)
        tensors["W_dec"] = tensors["W_dec"] * scale[:, None]
    if dtype is None and cfg.get("dtype") in DTYPES:
        dtype = DTYPES[cfg["dtype"]]
    hook = hook_name or meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    sae = _from_tensors(
        tensors,
        weights_path,
        architecture=arch,
        k=k,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),  # SAELens' default
        hook_name=hook,
        dtype=dtype,
        device=device,
    )
    for key, have in (("d_in", sae.d_in), ("d_sae", sae.d_sae)):
        said = cfg.get(key)
        if said is not None and said != have:
            raise UnlearnError(
                f"{cfg_path}: {key}={said} contradicts the weights in {weights_path} ({key} {have}); "
                "the folder mixes two SAEs: re-download or re-save it"
            )
    return sae


def load_saelens_folder(
    path: str | Path, *, hook_name: str | None = None, device: Device = None, dtype: torch.dtype | None = None
) -> SAE:
    """A SAELens folder (or its `cfg.json` / `sae_weights.safetensors`): standard, jumprelu or topk."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    cfg_path = folder / SAE_CFG_FILENAME
    if not cfg_path.exists():
        raise UnlearnError(
            f"{folder} has no {SAE_CFG_FILENAME}; a SAELens SAE folder holds "
            f"{SAE_CFG_FILENAME} and {SAE_WEIGHTS_FILENAME}"
        )
    weights = path if path.suffix == ".safetensors" else folder / SAE_WEIGHTS_FILENAME
    return _load_saelens_files(cfg_path, weights, hook_name=hook_name, device=device, dtype=dtype)


class _FarrellConfig:
    """Inert stand-in for `sae.config.Config` of efarrell1/unlearning_with_saes: only receives attributes."""


def load_farrell_pt(
    path: str | Path, *, hook_name: str | None = None, device: Device = None, dtype: torch.dtype | None = None
) -> SAE:
    """The authors' `.pt` SAE: `{"cfg": Config, "state_dict": ...}`; ReLU or topk, `b_dec` subtracted if
    `cfg.subtract_b_dec_from_inputs` (their `SparseAutoencoder.forward`)."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals([(_FarrellConfig, "sae.config.Config")]):
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for unknown globals, RuntimeError/EOFError for truncated files
        raise UnlearnError(f"cannot read {path} as an unlearning_with_saes SAE file ({e})") from e
    if not isinstance(blob, dict) or "state_dict" not in blob or "cfg" not in blob:
        raise UnlearnError(
            f"{path} is not an unlearning_with_saes SAE file (expected keys 'cfg', 'state_dict')"
        )
    cfg = vars(blob["cfg"])
    if cfg.get("different_output"):
        raise UnlearnError(f"{path} is a transcoder (different_output=True), not an SAE")
    act = cfg.get("activation_function", "relu")
    if act not in ("relu", "topk"):
        raise UnlearnError(f"{path}: activation {act!r} is not supported; supported: relu, topk")
    return _from_tensors(
        blob["state_dict"],
        path,
        architecture="standard" if act == "relu" else "topk",
        k=cfg.get("topk_amount") if act == "topk" else None,
        apply_b_dec_to_input=bool(cfg.get("subtract_b_dec_from_inputs", False)),
        hook_name=hook_name or cfg.get("hook_point"),
        dtype=dtype,
        device=device,
    )


Loader = Callable[..., SAE]


class Format(NamedTuple):
    """One on-disk SAE format: whether a local path holds it, how to read it, how to load a release of it."""

    matches: Callable[[Path], bool]
    load: Loader
    """Reads a local file or folder of this format."""
    release: Callable[..., SAE]
    """Downloads a release entry of this format (`_download`, the hub cache) and reads it."""


LOADERS: dict[str, Format] = {
    "gemma_scope_npz": Format(
        matches=lambda p: p.suffix == ".npz" or (p.is_dir() and (p / "params.npz").exists()),
        load=lambda p, **kw: load_gemma_scope_npz(p / "params.npz" if p.is_dir() else p, **kw),
        release=lambda e, **kw: load_gemma_scope_npz(_download(e.repo_id, f"{e.path}/params.npz"), **kw),
    ),
    "saelens": Format(
        matches=lambda p: (p.is_dir() and (p / SAE_CFG_FILENAME).exists())
        or p.suffix == ".safetensors" or p.name == SAE_CFG_FILENAME,
        load=lambda p, **kw: load_saelens_folder(p, **kw),
        release=lambda e, **kw: _load_saelens_files(_download(e.repo_id, f"{e.path}/{SAE_CFG_FILENAME}"),
                                                    _download(e.repo_id, f"{e.path}/{SAE_WEIGHTS_FILENAME}"), **kw),
    ),
    "farrell_pt": Format(
        matches=lambda p: p.suffix in (".pt", ".pth"),
        load=lambda p, **kw: load_farrell_pt(p, **kw),
        release=lambda e, **kw: load_farrell_pt(_download(e.repo_id, e.path), **kw),
    ),
}  # fmt: skip
"""Format name (as `releases.yaml` names it) -> Format; `load_local` and `load_from_registry` dispatch here."""


def load_local(
    path: Path, *, hook_name: str | None = None, device: Device = None, dtype: torch.dtype | None = None
) -> SAE:
    """Pick the loader from what is on disk (the first format in `LOADERS` that matches)."""
    for fmt in LOADERS.values():
        if fmt.matches(path):
            return fmt.load(path, hook_name=hook_name, device=device, dtype=dtype)
    raise UnlearnError(
        f"don't know how to read the SAE at {path}: expected a Gemma Scope params.npz (or a folder "
        f"holding one), a SAELens folder ({SAE_CFG_FILENAME} + {SAE_WEIGHTS_FILENAME}) or a .pt file"
    )


# --- the registry ---------------------------------------------------------------------------------------


class RegistryEntry(NamedTuple):
    """Where one registry id lives on the hub and how to read it."""

    release: str
    sae_id: str  # as resolved: an `l0~N` query becomes the concrete `average_l0_N` id
    repo_id: str
    path: str  # folder (or file, farrell_pt) inside the repo
    format: str
    hook_name: str | None


def load_releases() -> dict[str, dict]:
    """The shipped `sae_releases.yaml` (derived from SAELens' pretrained_saes.yaml)."""
    return yaml.safe_load(resources.files("unlearn.sae").joinpath("releases.yaml").read_text())


def _ids(rel: dict) -> list[str]:
    ids = list(rel.get("saes") or {})
    for folder, l0s in (rel.get("l0s") or {}).items():
        ids += [f"{folder}/average_l0_{n}" for n in l0s]
    return ids


def _close(word: str, options: list[str], what: str) -> str:
    near = difflib.get_close_matches(word, options, n=6, cutoff=0.5) or options[:6]
    return f"unknown {what} {word!r}; close matches: {', '.join(near)}"


def resolve(spec: str) -> RegistryEntry:
    """Map `release/sae_id` (or `release/layer_L/width_W/l0~N`) to its hub repo and file."""
    releases = load_releases()
    release, _, sae_id = spec.partition("/")
    if release not in releases:
        raise UnlearnError(
            _close(release, list(releases), "SAE release")
            + f" (and no local file {spec!r} exists; {_LOCAL_HINT})"
        )
    rel = releases[release]
    query = re.fullmatch(r"(layer_\d+/width_\w+)/(?:average_l0_(\d+)|l0~(\d+(?:\.\d+)?))", sae_id)
    if query and query.group(1) in (rel.get("l0s") or {}):
        l0s = rel["l0s"][query.group(1)]
        if query.group(3) is not None:  # closest L0, ties to the sparser SAE
            target = float(query.group(3))
            n = min(l0s, key=lambda v: (abs(v - target), v))
            sae_id = f"{query.group(1)}/average_l0_{n}"
            logger.info("%s -> %s/%s", spec, release, sae_id)
        elif int(query.group(2)) not in l0s:
            raise UnlearnError(
                f"{release} has no {sae_id}; {query.group(1)} has average_l0_N for N in {l0s} "
                f"(or ask for the closest: {query.group(1)}/l0~100)"
            )
        path = sae_id
    elif sae_id in (rel.get("saes") or {}):
        path = rel["saes"][sae_id]
    else:
        raise UnlearnError(_close(sae_id, _ids(rel), f"SAE id in release {release}:"))
    layer = re.search(r"layer_(\d+)", sae_id)
    template = rel.get("hook_template")
    hook = template.format(layer=layer.group(1) if layer else "", id=sae_id) if template else None
    return RegistryEntry(release, sae_id, rel["repo_id"], path, rel["format"], hook)


def _download(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """The one place that touches the hub: a cached `hf_hub_download`, with errors a user can act on."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    offline = [LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError]
    try:
        import httpx

        offline.append(httpx.TransportError)
    except ImportError:
        pass
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except tuple(offline) as e:
        raise UnlearnError(
            f"cannot download {filename} from the Hugging Face repo {repo_id}: the hub is unreachable (or "
            f"HF_HUB_OFFLINE is set) and the file is not in the local cache. Either {_LOCAL_HINT}, or fetch it "
            f"where the hub is reachable (huggingface-cli download {repo_id} {filename}) and set "
            "HF_HUB_OFFLINE=1 to use the cache"
        ) from e
    except GatedRepoError as e:
        raise UnlearnError(
            f"{repo_id} is gated: accept its licence on huggingface.co and log in "
            f"(huggingface-cli login), or {_LOCAL_HINT}"
        ) from e
    except RepositoryNotFoundError as e:
        raise UnlearnError(
            f"Hugging Face repo {repo_id} not found (or private: log in); {_LOCAL_HINT}"
        ) from e
    except EntryNotFoundError as e:
        raise UnlearnError(f"{repo_id} has no file {filename}; check the SAE id") from e


def load_from_registry(
    entry: RegistryEntry,
    *,
    hook_name: str | None = None,
    device: Device = None,
    dtype: torch.dtype | None = None,
) -> SAE:
    fmt = LOADERS.get(entry.format)
    if fmt is None:
        raise UnlearnError(
            f"release {entry.release} has unknown format {entry.format!r}; known: {', '.join(LOADERS)}"
        )
    return fmt.release(entry, hook_name=hook_name or entry.hook_name, device=device, dtype=dtype)


def load_sae(
    spec: str | Path, *, hook_name: str | None = None, device: Device = None, dtype: torch.dtype | None = None
) -> SAE:
    """The one entry point: an existing local file/folder, else a registry id.

    `hook_name` overrides the hook stored with the SAE; `dtype=None` keeps the file's dtype.
    Examples: `path/to/params.npz`, `runs/my_sae/` (SAELens folder),
    `gemma-scope-2b-pt-res-canonical/layer_3/width_16k/canonical`,
    `gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_142`, `gemma-scope-2b-pt-res/layer_7/width_16k/l0~100`.
    """
    path = resolve_path(spec)
    if path.exists():
        return load_local(path, hook_name=hook_name, device=device, dtype=dtype)
    text = str(spec)
    if (
        isinstance(spec, Path)
        or text.startswith(("/", ".", "~", "data/", SHIPPED))
        or path.suffix in (".npz", ".safetensors", ".pt")
    ):
        raise UnlearnError(
            f"SAE {text!r}: file or folder {path} does not exist (not found); train one with "
            "`unlearn train-sae` or pass --sae"
        )
    return load_from_registry(resolve(text), hook_name=hook_name, device=device, dtype=dtype)
