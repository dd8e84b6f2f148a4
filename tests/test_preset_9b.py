"""The gemma-2-9b-it preset and Gemma Scope's instruction-tuned 9B residual SAEs: resolved offline, checked
against SAELens' own listing of the release (sae_lens/pretrained_saes.yaml, commit 91ca16c)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from unlearn.cli import app
from unlearn.errors import UnlearnError
from unlearn.presets import get_preset
from unlearn.sae import loaders as sae_loaders
from unlearn.sae.loaders import load_sae
from unlearn.setup import resolve_setup

SAELENS_9B_IT = {  # SAELens: gemma-scope-9b-it-res `saes[*].id`, copied by hand (l0 = the id's suffix)
    "layer_9/width_16k": [14, 186, 26, 47, 88], "layer_9/width_131k": [121, 13, 22, 39, 67],
    "layer_20/width_16k": [14, 189, 25, 47, 91], "layer_20/width_131k": [13, 153, 24, 43, 81],
    "layer_31/width_16k": [14, 142, 24, 43, 76], "layer_31/width_131k": [109, 13, 22, 37, 63],
}  # fmt: skip
SAELENS_9B_IT_CANONICAL = {  # SAELens: gemma-scope-9b-it-res-canonical `id -> path`
    "layer_9/width_16k/canonical": "layer_9/width_16k/average_l0_88",
    "layer_20/width_16k/canonical": "layer_20/width_16k/average_l0_91",
    "layer_31/width_16k/canonical": "layer_31/width_16k/average_l0_76",
    "layer_9/width_131k/canonical": "layer_9/width_131k/average_l0_121",
    "layer_20/width_131k/canonical": "layer_20/width_131k/average_l0_81",
    "layer_31/width_131k/canonical": "layer_31/width_131k/average_l0_109",
}


def test_preset_resolves_to_the_9b_model_its_sae_and_an_rmu_section():
    p = get_preset("gemma-2-9b-it")
    s = resolve_setup("gemma-2-9b-it")
    assert (s.model.source, s.model.dtype, s.model.chat_template) == (
        "google/gemma-2-9b-it",
        "bfloat16",
        True,
    )
    assert s.hook_for().name == "blocks.9.hook_resid_post" and s.sae_spec() == p.sae
    assert s.eval["protocol"] == "letter" and s.eval["forget"] == ["wmdp-bio"] and len(s.eval["retain"]) == 4
    assert {k: s.rmu[k] for k in ("layer", "steering_coeff", "alpha", "lr")} == {
        "layer": 9, "steering_coeff": 400.0, "alpha": 100.0, "lr": 5.0e-5,
    }  # fmt: skip
    entry = sae_loaders.resolve(s.sae_spec())
    l0s = SAELENS_9B_IT["layer_9/width_16k"]
    closest = min(sorted(l0s), key=lambda n: abs(n - 100))  # the paper's rule, computed here
    assert (
        entry.sae_id
        == entry.path
        == f"layer_9/width_16k/average_l0_{closest}"
        == "layer_9/width_16k/average_l0_88"
    )
    assert (entry.repo_id, entry.format, entry.hook_name) == (
        "google/gemma-scope-9b-it-res", "gemma_scope_npz", "blocks.9.hook_resid_post",
    )  # fmt: skip
    assert s.hook_for(entry.hook_name).layer == s.rmu["layer"]


def test_registry_matches_saelens_listing():
    releases = sae_loaders.load_releases()
    rel = releases["gemma-scope-9b-it-res"]
    assert {k: sorted(v) for k, v in SAELENS_9B_IT.items()} == rel["l0s"]
    assert rel["d_in"] == 3584 and rel["repo_id"] == "google/gemma-scope-9b-it-res"
    assert releases["gemma-scope-9b-it-res-canonical"]["saes"] == SAELENS_9B_IT_CANONICAL
    for sae_id, path in SAELENS_9B_IT_CANONICAL.items():  # every canonical SAE is one of the release's
        entry = sae_loaders.resolve(f"gemma-scope-9b-it-res-canonical/{sae_id}")
        assert entry.path == path and path in sae_loaders._ids(rel)
        assert entry.hook_name == f"blocks.{sae_id.split('/')[0].removeprefix('layer_')}.hook_resid_post"
    e = sae_loaders.resolve("gemma-scope-9b-it-res/layer_20/width_16k/average_l0_91")  # the example
    assert (e.path, e.hook_name) == ("layer_20/width_16k/average_l0_91", "blocks.20.hook_resid_post")
    with pytest.raises(UnlearnError, match=r"\[13, 24, 43, 81, 153\]"):  # not a layer_20 131k L0
        sae_loaders.resolve("gemma-scope-9b-it-res/layer_20/width_131k/average_l0_91")


def test_loading_asks_the_hub_for_params_npz(tmp_path, monkeypatch):
    calls = []
    rng = np.random.default_rng(0)
    d_in, d_sae = 8, 16
    np.savez(tmp_path / "p.npz", W_enc=rng.normal(size=(d_in, d_sae)).astype(np.float32),
             W_dec=rng.normal(size=(d_sae, d_in)).astype(np.float32), b_enc=np.zeros(d_sae, np.float32),
             b_dec=np.zeros(d_in, np.float32), threshold=np.full(d_sae, 0.1, np.float32))  # fmt: skip
    monkeypatch.setattr(
        sae_loaders,
        "_download",
        lambda repo, name, revision=None: calls.append((repo, name)) or tmp_path / "p.npz",
    )
    sae = load_sae(get_preset("gemma-2-9b-it").sae)
    assert calls == [("google/gemma-scope-9b-it-res", "layer_9/width_16k/average_l0_88/params.npz")]
    assert sae.hook_name == "blocks.9.hook_resid_post" and sae.architecture == "jumprelu"


def test_offline_and_not_cached_is_a_clear_error(monkeypatch, tmp_path):
    """The real huggingface_hub, offline, empty cache: an error naming the repo, file and what to pass."""
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UnlearnError) as e:
        load_sae(get_preset("gemma-2-9b-it").sae)
    msg = str(e.value)
    for part in ("google/gemma-scope-9b-it-res", "layer_9/width_16k/average_l0_88/params.npz",
                 "--sae path/to/params.npz", "HF_HUB_OFFLINE=1"):  # fmt: skip
        assert part in msg


def test_list_saes_shows_the_9b_releases():
    out = CliRunner().invoke(app, ["list-saes"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    rows = {line.split()[1]: line for line in out.output.splitlines() if "gemma-scope-9b-it" in line}
    for release, n_ids in (("gemma-scope-9b-it-res", 30), ("gemma-scope-9b-it-res-canonical", 6)):
        cells = [c.strip() for c in rows[release].split("│")[1:-1]]
        assert cells == [release, "google/gemma-scope-9b-it-res", "google/gemma-2-9b-it", str(n_ids)]
    ids = CliRunner().invoke(app, ["list-saes", "gemma-scope-9b-it-res"]).output.split()
    assert len(ids) == 30 and "layer_20/width_16k/average_l0_91" in ids
