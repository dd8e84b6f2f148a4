"""Hook points read the right tensors, stop early without changing them, and always clean up."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES

from unlearn.errors import UnlearnError
from unlearn.hooks import capture, decoder_layers, edit, forward_to, hook_width, parse_hook_name


def _inputs(lm, texts=("The heart pumps blood.", "Answer: (A) heart")):
    return lm.tokenizer(list(texts), return_tensors="pt", padding=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_resid_hooks_match_hidden_states(tiny, family):
    lm = tiny(family)
    inputs = _inputs(lm)
    n = len(decoder_layers(lm.model))
    names = [f"blocks.{i}.hook_resid_post" for i in range(n - 1)] + [
        f"blocks.{i}.hook_resid_pre" for i in range(n)
    ]
    with torch.no_grad(), capture(lm.model, names) as acts:
        out = lm.model(**inputs, output_hidden_states=True)
    hs = out.hidden_states  # hs[i + 1] = output of layers[i]; the last entry is after the final norm
    for i in range(n - 1):
        torch.testing.assert_close(acts[f"blocks.{i}.hook_resid_post"], hs[i + 1], rtol=0, atol=0)
    for i in range(n):
        torch.testing.assert_close(acts[f"blocks.{i}.hook_resid_pre"], hs[i], rtol=0, atol=0)


def _wide_heads_model(family: str) -> torch.nn.Module:
    """heads × head_dim (4 × 24 = 96) != hidden size (64), as on gemma-2-2b (8 × 256 = 2048 vs 2304),
    so a width read from the hidden size cannot pass."""
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        GemmaConfig,
        GemmaForCausalLM,
    )

    common = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    if family == "gemma":
        return GemmaForCausalLM(GemmaConfig(**common)).eval()
    if family == "gemma2":
        return Gemma2ForCausalLM(Gemma2Config(**common, attn_implementation="eager")).eval()
    return Gemma3ForCausalLM(Gemma3TextConfig(**common, attn_implementation="eager")).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_z_is_concatenated_heads(family):
    model = _wide_heads_model(family)
    assert hook_width(model, "blocks.1.attn.hook_z") == 96  # 4 heads × 24
    assert hook_width(model, "blocks.1.hook_resid_post") == 64
    ids = torch.tensor([[2, 5, 7, 9, 11]])
    acts = forward_to(model, ["blocks.1.attn.hook_z"], input_ids=ids)
    assert acts["blocks.1.attn.hook_z"].shape == (1, 5, 96)
    # independent: the input of o_proj, captured by a plain PyTorch pre-hook
    seen = {}
    handle = model.model.layers[1].self_attn.o_proj.register_forward_pre_hook(
        lambda m, a: seen.setdefault("z", a[0])
    )
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    torch.testing.assert_close(acts["blocks.1.attn.hook_z"], seen["z"], rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_to_stops_early_with_same_activations(tiny, family):
    lm = tiny(family)
    inputs = _inputs(lm)
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    with torch.no_grad(), capture(lm.model, names) as full:
        lm.model(**inputs)
    later_calls = []
    handle = decoder_layers(lm.model)[2].register_forward_pre_hook(lambda *a: later_calls.append(1))
    head = lm.model.lm_head.register_forward_pre_hook(lambda *a: later_calls.append(1))
    try:
        with torch.no_grad():
            early = forward_to(lm.model, names, **inputs)
    finally:
        handle.remove()
        head.remove()
    assert later_calls == []  # neither layer 2 nor the output head ran
    for name in names:
        assert torch.equal(early[name], full[name])


def test_forward_to_keeps_graph_when_asked(tiny):
    lm = tiny("gemma2")
    weight = decoder_layers(lm.model)[1].mlp.down_proj.weight
    weight.requires_grad_(True)
    try:
        act = forward_to(lm.model, ["blocks.1.hook_resid_post"], detach=False, **_inputs(lm))
        act["blocks.1.hook_resid_post"].sum().backward()
        assert weight.grad is not None and weight.grad.abs().sum() > 0
    finally:
        weight.requires_grad_(False)
        weight.grad = None


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_unchanged_after_context_even_on_error(tiny, family):
    lm = tiny(family)
    inputs = _inputs(lm)

    def n_hooks():  # transformers registers hooks of its own: count, don't expect zero
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())

    hooks_before = n_hooks()
    with torch.no_grad():
        before = lm.model(**inputs).logits
        with pytest.raises(ValueError):
            with (
                edit(lm.model, "blocks.1.hook_resid_post", lambda x: x * 0),
                capture(lm.model, ["blocks.2.attn.hook_z"]),
            ):
                edited = lm.model(**inputs).logits
                assert not torch.equal(edited, before)
                raise ValueError("body failed")
        after = lm.model(**inputs).logits
    assert torch.equal(before, after)
    assert n_hooks() == hooks_before


@pytest.mark.parametrize(
    "name", ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.1.attn.hook_z"]
)
def test_edit_identity_is_exact_and_keeps_dtype(tiny_folder, name):
    from unlearn.models import load_model

    lm = load_model(str(tiny_folder("gemma2")), device="cpu", dtype="bfloat16")
    inputs = _inputs(lm)
    seen = []
    with torch.no_grad():
        plain = lm.model(**inputs).logits
        with edit(lm.model, name, lambda x: seen.append(x.dtype) or x.float()):  # returns float32 ...
            hooked = lm.model(**inputs).logits  # ... which the hook casts back to bf16
    assert seen == [torch.bfloat16]
    assert torch.equal(plain, hooked)


def test_bad_hook_names(tiny):
    lm = tiny("gemma2")
    with pytest.raises(UnlearnError, match="Unknown hook point"):
        parse_hook_name("blocks.1.hook_nonsense")
    with pytest.raises(UnlearnError, match="Unknown hook point"):
        parse_hook_name("layers.1.output")
    with pytest.raises(UnlearnError, match=r"out of range: the model has 4 layers \(0..3\)"):
        forward_to(lm.model, ["blocks.9.hook_resid_post"], **_inputs(lm))


def test_live_hooks_ignore_transformers_output_capturing(tiny):
    from unlearn.hooks import live_hooks

    model = tiny("gemma2").model
    with torch.inference_mode():
        model(torch.tensor([[2, 5, 7]]), output_hidden_states=True)  # installs transformers' recorders
    assert not live_hooks(model)
    with edit(model, "blocks.1.hook_resid_post", lambda x: x):
        assert live_hooks(model) == ["model.layers.1"]
    assert not live_hooks(model)
