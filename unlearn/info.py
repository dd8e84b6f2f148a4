"""`unlearn info`: what a preset/model/SAE combination is, checked by running a few tokens through it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table

from unlearn.errors import UnlearnError
from unlearn.hooks import check_compatible, decoder_layers, forward_to, hook_width, text_config
from unlearn.models import load_model
from unlearn.options import Flag, ModelFlags, command
from unlearn.setup import setup_of

SAMPLE_TEXT = "The mitochondria produce ATP for the cell, while ribosomes build proteins from amino acids."


@dataclass
class InfoConfig(ModelFlags):
    sae: str | None = None
    """SAE spec instead of the preset's (registry id, SAELens folder, params.npz); 'none' to skip."""
    hook: str | None = None
    """Hook point instead of the preset's / the SAE's."""


def run_info(cfg: InfoConfig) -> dict[str, object]:
    """Load the model (and SAE), run one sentence, and return the facts shown by `unlearn info`."""
    setup = setup_of(cfg)
    lm = load_model(setup)
    preset = setup.preset
    model = lm.model
    text_cfg = text_config(model)
    facts: dict[str, object] = {
        "model": f"{preset.name} ({setup.model.source})" if preset else setup.model.source,
        "class": type(model).__name__,
        "layers": len(decoder_layers(model)),
        "d_model": text_cfg.hidden_size,
        "vocab": text_cfg.vocab_size,
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
        "chat template": "yes" if lm.tokenizer.chat_template else "no",
    }
    sae_spec = setup.sae_spec()
    point = setup.hook_for()
    hook = point.name if point else None
    sae = None
    if sae_spec and sae_spec != "none":
        from unlearn.sae.loaders import load_sae
        from unlearn.sae.quality import variance_explained

        sae = load_sae(sae_spec, device=model.device, dtype=model.dtype)
        point = setup.hook_for(sae.hook_name)
        hook = point.name if point else None
    if hook:
        facts["hook point"] = hook
        facts["width at hook"] = hook_width(model, hook)
    if sae is not None:
        if hook is None:
            raise UnlearnError("The SAE names no hook point; pass --hook blocks.<L>.hook_resid_post.")
        check_compatible(sae, hook_width(model, hook), hook)
        inputs = lm.tokenizer([SAMPLE_TEXT], return_tensors="pt").to(model.device)
        with torch.no_grad():
            x = forward_to(model, [hook], **inputs)[hook][0, 1:].to(sae.W_enc.dtype)  # (tokens, d_in), no BOS
            f = sae.encode(x)
            x_hat = sae.decode(f)
        facts["SAE"] = f"{sae.architecture}, d_in {sae.d_in}, d_sae {sae.d_sae}"
        facts["SAE L0 (sample)"] = f"{(f > 0).sum(-1).float().mean().item():.1f} over {x.shape[0]} tokens"
        facts["SAE var. explained (sample)"] = f"{variance_explained(x, x_hat):.3f}"
    return facts


def show_info(cfg: InfoConfig) -> None:
    """`unlearn info`: the facts of `run_info` as a table."""
    facts = run_info(cfg)
    table = Table(title="unlearn info", show_header=False)
    table.add_column(style="bold cyan")
    table.add_column()
    for key, value in facts.items():
        table.add_row(key, str(value))
    Console().print(table)


info_command = command(
    InfoConfig, show_info,
    doc="Show a model's layers, widths and hook point, and its SAE's shape and L0 on a sample sentence.",
)  # fmt: skip


@dataclass
class ListSAEsConfig:
    release: str | None = None
    """Show the SAE ids of one release (default: list the releases)."""


def show_saes(cfg: ListSAEsConfig) -> None:
    """Pretrained SAE releases (and their ids) that --sae accepts."""
    from unlearn.sae.loaders import _ids, load_releases

    release, releases = cfg.release, load_releases()
    if release is None:
        table = Table(title="SAE releases (--sae RELEASE/ID)")
        for column in ("release", "hub repo", "model", "ids"):
            table.add_column(column)
        for name, rel in releases.items():
            table.add_row(name, rel["repo_id"], str(rel.get("model", "")), str(len(_ids(rel))))
        Console().print(table)
        return
    if release not in releases:
        raise UnlearnError(f"Unknown SAE release {release!r}; known: {', '.join(releases)}.")
    Console().print("\n".join(_ids(releases[release])))


list_saes_command = command(
    ListSAEsConfig, show_saes, doc="Pretrained SAE releases (and their ids) that --sae accepts.",
    flags={"release": Flag(argument=True)},
)  # fmt: skip
