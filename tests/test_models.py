"""Model loading from folders and presets, with clear errors for what cannot be loaded."""

from __future__ import annotations

import pytest
import torch

from unlearn.errors import UnlearnError
from unlearn.models import load_model, resolve_dtype
from unlearn.presets import get_preset, preset_names


def test_presets_are_complete():
    assert {"gemma-3-270m", "gemma-2-2b-it", "gemma-2b-it"} <= set(preset_names())
    p = get_preset("gemma-2-2b-it")
    assert p.model == "google/gemma-2-2b-it" and p.hook_point == "blocks.3.hook_resid_post"
    assert p.rmu["layer"] == 3 and p.rmu["steering_coeff"] == 400 and p.rmu["alpha"] == 100


def test_unknown_preset_suggests_close_names():
    with pytest.raises(UnlearnError, match="Did you mean gemma-2-2b-it"):
        get_preset("gemma-2-2b")


def test_load_local_folder(tiny_folder):
    lm = load_model(str(tiny_folder("gemma3")), device="cpu")
    assert lm.preset is None and lm.model.dtype == torch.float32
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert lm.tokenizer("hi").input_ids[0] == lm.tokenizer.bos_token_id


def test_missing_folder_and_unreachable_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnlearnError, match="HF_HUB_OFFLINE"):
        load_model("google/this-model-does-not-exist", device="cpu")
    with pytest.raises(
        UnlearnError, match="missing.gguf': no such local file"
    ):  # resolve_setup, before loading
        load_model(str(tmp_path / "missing.gguf"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnlearnError, match="no loadable model"):
        load_model(str(tmp_path / "empty"), device="cpu")


def test_dtype_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(UnlearnError, match="Unknown dtype"):
        resolve_dtype("float8", cpu)


@pytest.mark.slow
def test_embedded_gemma3_270m_hooked_activation():
    """The real embedded model: converted once, cached, and its hooked activation equals hidden_states."""
    from unlearn.hooks import capture

    lm = load_model("gemma-3-270m", device="cpu")
    cfg = lm.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (18, 640)
    inputs = lm.tokenizer(["The heart pumps blood through the body."], return_tensors="pt")
    with torch.no_grad(), capture(lm.model, ["blocks.6.hook_resid_post"]) as acts:
        out = lm.model(**inputs, output_hidden_states=True)
    assert torch.equal(acts["blocks.6.hook_resid_post"], out.hidden_states[7])
    top = out.logits[0, -1].argmax().item()
    assert lm.tokenizer.decode(top).strip() != ""
