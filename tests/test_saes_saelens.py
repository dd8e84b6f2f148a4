"""Cross-check with the real SAELens: folders it writes load here with identical encodings, and back.

Optional: needs `pip install sae-lens==6.54.12` (the `sae` extra); skipped without it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

sae_lens = pytest.importorskip("sae_lens")

from unlearn.sae.loaders import load_sae  # noqa: E402
from unlearn.sae.model import SAE  # noqa: E402

D_IN, D_SAE, K = 16, 48, 6


def build_saelens(arch: str, apply_b_dec: bool, seed: int = 0):
    """A SAELens inference SAE of `arch` with random weights (its own classes, its own config)."""
    common = {"d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": apply_b_dec}
    if arch == "jumprelu":
        sae = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(**common))
    elif arch == "standard":
        sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(**common))
    else:
        sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(k=K, **common))
    sae.cfg.metadata.hook_name = "blocks.2.hook_resid_post"
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=g) * 0.3)
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(D_SAE, generator=g) * 0.5)
    return sae


@pytest.fixture
def x_BTD() -> torch.Tensor:
    return torch.randn(2, 5, D_IN, generator=torch.Generator().manual_seed(1)) * 2


@pytest.mark.parametrize("arch", ["jumprelu", "standard", "topk"])
@pytest.mark.parametrize("apply_b_dec", [False, True])
def test_saelens_written_folder_loads_identically(tmp_path, arch, apply_b_dec, x_BTD):
    theirs = build_saelens(arch, apply_b_dec)
    theirs.save_model(tmp_path / "sae")
    ours = load_sae(tmp_path / "sae")
    assert (ours.architecture, ours.apply_b_dec_to_input, ours.hook_name) == (
        arch,
        apply_b_dec,
        "blocks.2.hook_resid_post",
    )
    with torch.no_grad():
        f_theirs = theirs.encode(x_BTD)
        torch.testing.assert_close(ours.encode(x_BTD), f_theirs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.decode(f_theirs), theirs.decode(f_theirs), rtol=1e-5, atol=1e-5)
    assert 0 < (f_theirs > 0).float().mean() < 1


@pytest.mark.parametrize("arch", ["jumprelu", "standard", "topk"])
def test_our_folder_loads_in_saelens(tmp_path, arch, x_BTD):
    ours = build_saelens(arch, False, seed=3)
    ours.save_model(tmp_path / "a")
    ours = load_sae(tmp_path / "a")
    ours.save(tmp_path / "b")
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "b")
    assert theirs.cfg.architecture() == arch and theirs.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x_BTD), theirs.encode(x_BTD), rtol=1e-5, atol=1e-5)


def test_gemma_scope_npz_matches_saelens_gemma_2_loader(tmp_path, monkeypatch, x_BTD):
    """SAELens' own Gemma Scope converter (apply_b_dec_to_input=False) on the same params.npz."""
    from sae_lens.loading import pretrained_sae_loaders as loaders

    rng = np.random.default_rng(2)
    d_in, d_sae = 2304, 64  # the converter fixes d_in from the repo name (gemma-2-2b)
    params = {
        "W_enc": rng.normal(size=(d_in, d_sae)) / 48,
        "W_dec": rng.normal(size=(d_sae, d_in)) / 8,
        "b_enc": rng.normal(size=d_sae) * 0.1,
        "b_dec": rng.normal(size=d_in) * 0.1,
        "threshold": rng.uniform(0.05, 0.5, size=d_sae),
    }
    np.savez(tmp_path / "params.npz", **{k: v.astype(np.float32) for k, v in params.items()})
    monkeypatch.setattr(loaders, "hf_hub_download", lambda **kw: str(tmp_path / "params.npz"))
    cfg, state, _ = loaders.gemma_2_sae_huggingface_loader(
        "google/gemma-scope-2b-pt-res", "layer_3/width_16k/average_l0_142"
    )
    cfg = loaders.handle_config_defaulting(cfg)
    cfg["d_sae"] = d_sae  # the converter reads the width from the folder name
    theirs = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig.from_dict(cfg))
    theirs.load_state_dict(state)
    ours = load_sae(tmp_path / "params.npz")
    assert ours.hook_name is None and cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    x = torch.randn(2, 3, d_in, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        f = theirs.encode(x)
        torch.testing.assert_close(ours.encode(x), f, rtol=1e-5, atol=1e-5)
    assert (f > 0).any() and not theirs.cfg.apply_b_dec_to_input
    assert isinstance(ours, SAE)
