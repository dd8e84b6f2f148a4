"""Attack building blocks on tiny models, each against an independent computation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import Q

from unlearn.attacks.direction import (
    ablated,
    dominant_direction,
    edit_differences,
    edited_tokens,
    orthonormal,
    project_out,
)
from unlearn.attacks.probe import choice_activations, probe_accuracy
from unlearn.attacks.prompting import few_shot, padded, padding_text
from unlearn.attacks.recovery import recovered_fraction
from unlearn.attacks.relearn import relearned, trainable_names
from unlearn.attacks.state import clamp_target, swapped
from unlearn.errors import UnlearnError
from unlearn.hooks import capture, decoder_layers, forward_to
from unlearn.sae.model import SAE

HOOK = "blocks.1.hook_resid_post"
TEXTS = [
    "The cell nucleus holds DNA. Mitochondria make ATP for the cell.",
    "Which organ pumps blood through the body? The heart pumps blood.",
    "Enzymes are proteins that speed up reactions in the cell.",
]


def tiny_sae(d_in: int, d_sae: int = 32, seed: int = 0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d_in, d_sae, "jumprelu", hook_name=HOOK)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) / d_sae**0.5)
        sae.threshold.copy_(torch.rand(d_sae, generator=g) * 0.01)
    return sae


def n_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_identical(model, snap):
    for n, p in model.named_parameters():
        assert torch.equal(p, snap[n]), n


# --- recovered fraction ----------------------------------------------------------------------------------


def test_recovered_fraction_matches_a_brute_force_bootstrap():
    rng = np.random.default_rng(1)
    base, unl = rng.random(40) < 0.9, rng.random(40) < 0.3
    att = rng.random(40) < 0.6
    got = recovered_fraction(base, unl, att, n_boot=300, seed=7)
    # brute force: the same resample indices, one loop iteration per resample
    idx = np.random.default_rng(7).integers(0, 40, size=(300, 40))
    ratios = []
    for row in idx:
        gap = base[row].mean() - unl[row].mean()
        if abs(gap) * 40 >= 1 - 1e-9:
            ratios.append((att[row].mean() - unl[row].mean()) / gap)
    assert got.value == pytest.approx((att.mean() - unl.mean()) / (base.mean() - unl.mean()))
    assert (got.low, got.high) == pytest.approx(tuple(np.percentile(ratios, [2.5, 97.5])))
    assert recovered_fraction(base, base, att) is None  # no gap: undefined
    full = recovered_fraction(base, unl, base)
    assert full.value == pytest.approx(1.0) and full.low == pytest.approx(1.0)


# --- direction ablation ----------------------------------------------------------------------------------


def test_projection_removes_exactly_the_component_along_d():
    g = torch.Generator().manual_seed(0)
    x_ND = torch.randn(50, 16, dtype=torch.float64, generator=g)
    d_D = torch.randn(16, dtype=torch.float64, generator=g)
    out = project_out(x_ND, orthonormal(d_D[:, None]))
    unit = d_D / d_D.norm()
    expected = x_ND - (x_ND @ unit)[:, None] * unit[None, :]  # x − (x·d)d
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert (out @ unit).abs().max() < 1e-12
    # nothing orthogonal to d changes
    v = torch.randn(16, dtype=torch.float64, generator=g)
    v = v - (v @ unit) * unit
    torch.testing.assert_close(out @ v, x_ND @ v, rtol=0, atol=1e-12)
    # a span: the orthonormal basis spans the same space, rank-deficient columns dropped
    b_DK = torch.randn(16, 3, dtype=torch.float64, generator=g)
    q = orthonormal(torch.cat([b_DK, b_DK[:, :1] * 2], dim=1))
    assert q.shape == (16, 3)
    p_ref = b_DK @ torch.linalg.solve(b_DK.T @ b_DK, b_DK.T)  # least-squares projector onto span
    torch.testing.assert_close(project_out(x_ND, q), x_ND - x_ND @ p_ref, rtol=0, atol=1e-10)


def test_dominant_direction_recovers_a_planted_direction():
    g = torch.Generator().manual_seed(0)
    d_D = torch.randn(32, dtype=torch.float64, generator=g)
    d_D /= d_D.norm()
    diff = (3 + torch.rand(200, 1, dtype=torch.float64, generator=g)) * d_D + 0.05 * torch.randn(
        200, 32, dtype=torch.float64, generator=g
    )
    got, explained = dominant_direction(diff)
    v_ref = np.linalg.svd(diff.numpy(), full_matrices=False)[2][0]
    assert abs(float(got @ torch.from_numpy(v_ref))) == pytest.approx(1.0, abs=1e-10)
    assert float(got @ d_D) > 0.99 and explained > 0.9


def test_ablation_hook_acts_after_the_unlearning_hook(tiny, tokenizer):
    lm = tiny("gemma3")
    model = lm.model
    sae = tiny_sae(64)
    target = clamp_target(sae, list(range(8)), "clamp", -5.0, hook=HOOK)
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    rows = edit_differences(model, tokenizer, TEXTS, target, HOOK)
    real = (enc["attention_mask"] == 1) & (enc["input_ids"] != tokenizer.bos_token_id)
    assert rows.n_tokens == int(real.sum()) and 0 < rows.n_edited <= rows.n_tokens
    d_D, _ = dominant_direction(rows.diff_ND)
    hooks = n_hooks(model)
    with torch.inference_mode(), target(model):
        with capture(model, [HOOK]) as plain:
            model(**enc)
        with ablated(model, HOOK, d_D[:, None]), capture(model, [HOOK]) as abl:
            model(**enc)
        assert n_hooks(model) == hooks + 2  # clamp edit + remembered ids pre-hook
    assert n_hooks(model) == hooks
    ref = project_out(plain[HOOK].double(), d_D[:, None] / d_D.norm()).float()
    torch.testing.assert_close(abl[HOOK], ref, rtol=1e-5, atol=1e-5)


def test_edit_rows_are_the_clamps_own_delta_x_on_the_edited_tokens(tiny, tokenizer):
    """For an SAE hook the rows are exactly Δx = (f' − f)·W_dec on the tokens the clamp changed,
    computed here from the SAE's full encoder (float64), and no unedited token is kept."""
    model = copy.deepcopy(tiny("gemma3").model).double()  # the fixture shares its model: copy it
    sae = tiny_sae(64).double()
    feats = [0, 3]
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.inference_mode():
        x_BTD = forward_to(model, [HOOK], **enc)[HOOK]
    real = (enc["attention_mask"] == 1) & (enc["input_ids"] != tokenizer.bos_token_id)
    x_ND = x_BTD[real]
    with torch.no_grad():  # thresholds between two pre-activations near the 70th percentile: some fire
        pre_KN = (x_ND @ sae.W_enc[:, feats] + sae.b_enc[feats]).T.sort(dim=-1).values
        m = int(0.7 * pre_KN.shape[1])
        sae.threshold[feats] = (pre_KN[:, m] + pre_KN[:, m + 1]) / 2
    target = clamp_target(sae, feats, "clamp", -5.0, hook=HOOK)
    rows = edit_differences(model, tokenizer, TEXTS, target, HOOK)
    f_NK = sae.encode(x_ND)[:, feats]  # the full encoder, not the clamp's subset path
    df_NK = torch.where(f_NK > 0, torch.full_like(f_NK, -5.0), f_NK) - f_NK
    dx_ND = df_NK @ sae.W_dec[feats]
    edited = dx_ND.norm(dim=-1) > 0
    assert 0 < int(edited.sum()) < len(edited)  # some tokens edited, some not: the restriction matters
    assert rows.n_edited == int(edited.sum())
    torch.testing.assert_close(rows.diff_ND, dx_ND[edited], rtol=0, atol=1e-10)


def test_large_rule_keeps_tokens_that_moved_by_a_fraction_of_their_norm():
    base = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 10.0]], dtype=torch.float64)  # norms 5, 1, 10
    diff = torch.tensor([[0.0, 1.0], [0.1, 0.0], [1.0, 0.0]], dtype=torch.float64)  # rel 0.2, 0.1, 0.1
    assert edited_tokens(diff, base, "large", 0.15).tolist() == [True, False, False]
    assert edited_tokens(diff, base, "nonzero").tolist() == [True, True, True]
    with pytest.raises(UnlearnError, match="rule"):
        edited_tokens(diff, base, "other")


def test_direction_estimate_ignores_unedited_rmu_drift():
    """A weights edit moving a few tokens far along d and every other token a little along e: the `large`
    rule finds d; all tokens together would give the everywhere-drift e instead."""
    g = torch.Generator().manual_seed(0)
    d = torch.randn(64, dtype=torch.float64, generator=g)
    d /= d.norm()
    e = torch.randn(64, dtype=torch.float64, generator=g)
    e -= (e @ d) * d
    e /= e.norm()
    drift = 0.6 * e + 0.01 * torch.randn(200, 64, dtype=torch.float64, generator=g)  # rel. ~0.075 each
    diff = torch.cat([3.0 * d.expand(5, 64), drift])  # 5 edited tokens, rel. 0.375; Σ‖drift‖² > Σ‖edit‖²
    base = torch.full((205, 64), 1.0, dtype=torch.float64)  # norm 8 per token
    keep = edited_tokens(diff, base, "large", 0.2)
    assert keep[:5].all() and not keep[5:].any()
    got, _ = dominant_direction(diff[keep])
    assert float(got @ d) > 1 - 1e-12
    everywhere, _ = dominant_direction(diff)
    assert abs(float(everywhere @ d)) < 0.5 and abs(float(everywhere @ e)) > 0.9


# --- probes ----------------------------------------------------------------------------------------------


def _synthetic(n: int, d: int, seed: int, shuffle: bool):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4, d))
    answers = rng.integers(0, 4, size=n)
    x[np.arange(n), answers, 0] += 4.0  # the correct choice is shifted along feature 0: separable
    if shuffle:
        answers = rng.permutation(answers)
    return x, answers


def test_probe_decodes_separable_activations_and_not_shuffled_labels():
    x_tr, y_tr = _synthetic(300, 12, 0, False)
    x_te, y_te = _synthetic(300, 12, 1, False)
    assert probe_accuracy(x_tr, y_tr, x_te, y_te) > 0.97
    xs_tr, ys_tr = _synthetic(300, 12, 2, True)
    xs_te, ys_te = _synthetic(600, 12, 3, True)
    assert abs(probe_accuracy(xs_tr, ys_tr, xs_te, ys_te) - 0.25) < 0.07


def test_choice_activations_match_an_unbatched_forward(tiny, tokenizer):
    from unlearn.eval.prompts import cloze_context, cloze_continuation, encode_pair

    model = tiny("gemma2").model
    qs = [Q("Which organ pumps blood?", ["heart", "liver", "a kidney cell", "lung"], 0),
          Q("What makes ATP?", ["mitochondria", "the nucleus", "DNA", "enzymes"], 0)]  # fmt: skip
    x = choice_activations(model, tokenizer, qs, [0, 2], batch_size=3)
    assert x.shape == (2, 4, 2, 64)
    ctx, cont = encode_pair(cloze_context(qs[1].question), cloze_continuation(qs[1].choices[2]), tokenizer)
    with torch.inference_mode():
        out = model(torch.tensor([ctx + cont]), output_hidden_states=True)
    torch.testing.assert_close(
        torch.from_numpy(x[1, 2, 1]), out.hidden_states[3][0, -1], rtol=1e-4, atol=1e-4
    )


# --- relearning ------------------------------------------------------------------------------------------


def test_relearning_lowers_loss_changes_only_chosen_params_and_keeps_the_hook(tiny, tokenizer):
    lm = tiny("gemma3")
    model = lm.model
    sae = tiny_sae(64)
    target = clamp_target(sae, list(range(8)), "clamp", -5.0, hook=HOOK)
    names = trainable_names(model, [1])
    layer1 = {id(p) for p in decoder_layers(model)[1].parameters()}
    assert names and all(id(dict(model.named_parameters())[n]) in layer1 for n in names)
    assert not any("norm" in n for n in names)
    before = snapshot(model)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    hooks = n_hooks(model)
    seen = []
    # count the clamp's calls during training: the hook stays installed
    with target(model):
        handle = decoder_layers(model)[1].register_forward_hook(lambda *_: seen.append(1))
        with relearned(model, tokenizer, TEXTS, params=names, steps=12, lr=3e-3, batch_size=3, seed=0) as st:
            assert n_hooks(model) == hooks + 3
            changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
            assert changed == set(names)  # every other parameter bit-identical
        handle.remove()
    assert len(seen) == 12 + 2 and st.steps == 12 and st.tokens > 0  # 12 steps + loss before and after
    assert np.mean(st.losses[-3:]) < np.mean(st.losses[:3])
    assert st.loss_after < st.loss_before  # on the same fixed texts, with the hook in place
    assert n_hooks(model) == hooks
    assert_identical(model, before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert all(p.grad is None for p in model.parameters())


def test_relearning_trains_and_evaluates_through_the_gate(tiny, tokenizer):
    """A gated target: the gate sees every training forward (its statistics are recorded per forward)
    and the edit changes the training loss; on exit no hook is left and later forwards reach no gate."""
    from contextlib import contextmanager

    from unlearn.clamp.gates import FiringLog, Gate, gated

    model = tiny("gemma3").model
    sae = tiny_sae(64)
    gate = Gate("window", threshold=-1.0, features=tuple(range(8)), value=-5.0)  # fires on every sequence
    record = FiringLog()

    @contextmanager
    def install(m):
        with gated(m, sae, gate, hook_name=HOOK, record=record):
            yield

    target = clamp_target(sae, list(range(8)), gate=install, hook=HOOK)
    names = trainable_names(model, [2])
    hooks = n_hooks(model)
    with (
        target(model),
        relearned(model, tokenizer, TEXTS, params=names, steps=4, lr=1e-3, batch_size=3) as st,
    ):
        assert n_hooks(model) == hooks + 2
        assert len(record.stats["all"]) == (4 + 2) * 3  # 4 steps + 2 loss passes, 3 sequences each
        with torch.inference_mode():
            gated_logits = model(**tokenizer(TEXTS[:1], return_tensors="pt")).logits
    with relearned(model, tokenizer, TEXTS, params=names, steps=4, lr=1e-3, batch_size=3) as plain:
        pass
    assert n_hooks(model) == hooks and len(record.stats["all"]) == 6 * 3 + 1  # + the logits forward
    assert st.loss_before != pytest.approx(plain.loss_before)  # the gate's edit was in the loss
    with torch.inference_mode():
        assert not torch.allclose(model(**tokenizer(TEXTS[:1], return_tensors="pt")).logits, gated_logits)


def test_relearning_restores_weights_after_an_error(tiny, tokenizer):
    model = tiny("gemma").model
    before = snapshot(model)
    names = trainable_names(model, [0], modules=["mlp.down_proj"])
    assert len(names) == 1
    with pytest.raises(RuntimeError, match="boom"):
        with relearned(model, tokenizer, TEXTS, params=names, steps=2, lr=1e-2):
            raise RuntimeError("boom")
    assert_identical(model, before)
    with pytest.raises(UnlearnError, match="out of range"):
        trainable_names(model, [9])


# --- RMU-style state -------------------------------------------------------------------------------------


def test_swapped_weights_are_restored(tiny):
    model = tiny("gemma2").model
    before = snapshot(model)
    name = "model.layers.1.mlp.down_proj.weight"
    trained = {name: torch.randn_like(before[name])}
    with swapped(model, trained):
        assert torch.equal(dict(model.named_parameters())[name], trained[name])
    assert_identical(model, before)
    with pytest.raises(UnlearnError, match="do not fit"):
        with swapped(model, {name: torch.zeros(3, 3)}):
            pass
    assert_identical(model, before)


# --- prompt attacks --------------------------------------------------------------------------------------


def test_few_shot_and_padding_rewrite_only_the_question_text(tokenizer):
    qs = [Q("Which organ pumps blood?", ["heart", "liver", "kidney", "lung"], 0)]
    shots = [Q("What holds DNA?", ["nucleus", "wall", "ATP", "lung"], 0), Q("Two?", ["a", "b", "c", "d"], 3)]
    out = few_shot(qs, shots)
    from unlearn.eval.prompts import cloze_context

    assert cloze_context(out[0].question) == (
        "Question: What holds DNA?\nAnswer: nucleus\n\nQuestion: Two?\nAnswer: d\n\n"
        "Question: Which organ pumps blood?\nAnswer:"
    )
    assert (out[0].choices, out[0].answer, qs[0].question) == (qs[0].choices, 0, "Which organ pumps blood?")
    prefix, n = padding_text(tokenizer, TEXTS, 20)
    assert n == 20 and len(tokenizer.encode(prefix, add_special_tokens=False)) == pytest.approx(20, abs=2)
    assert padded(qs, prefix)[0].question.endswith("\n\nWhich organ pumps blood?")
    with pytest.raises(UnlearnError, match="--pad-tokens"):
        padding_text(tokenizer, TEXTS[:1], 10_000)


def test_relearn_texts_qa_are_solved_dev_questions_disjoint_from_test():
    from unlearn.attacks.relearn import relearn_texts
    from unlearn.data import load_questions

    texts = relearn_texts("qa:offline:bio@dev", 5)
    dev = load_questions("offline:bio@dev")[:5]
    assert texts == [f"Question: {q.question.strip()}\nAnswer: {q.choices[q.answer]}" for q in dev]
    test_q = {q.question for q in load_questions("offline:bio@test")}
    assert not test_q & {q.question for q in dev}
    assert len(relearn_texts("offline:retain", 3)) == 3


def test_gated_target_installs_the_gate_instead_of_the_plain_clamp(tiny):
    from contextlib import contextmanager

    from unlearn.clamp.intervene import feature_edit

    model = tiny("gemma3").model
    sae = tiny_sae(64)
    entered = []

    @contextmanager
    def gate(m):
        entered.append(m)
        with feature_edit(m, sae, [0, 1], "clamp", -5.0, hook_name=HOOK):
            yield

    target = clamp_target(sae, [0, 1], gate=gate)
    hooks = n_hooks(model)
    with target(model):
        assert entered == [model] and n_hooks(model) == hooks + 2
        assert not any(p.requires_grad for p in sae.parameters())
    assert n_hooks(model) == hooks and target.name.startswith("gated")
    torch.testing.assert_close(target.decoder_basis_DK, sae.W_dec[[0, 1]].T)


def test_mean_ablation_sets_the_component_to_the_mean_and_keeps_the_rest():
    g = torch.Generator().manual_seed(3)
    x_ND = torch.randn(40, 12, dtype=torch.float64, generator=g) + 5.0
    d_D = torch.randn(12, dtype=torch.float64, generator=g)
    mu_D = torch.randn(12, dtype=torch.float64, generator=g)
    unit = d_D / d_D.norm()
    out = project_out(x_ND, orthonormal(d_D[:, None]), mu_D)
    torch.testing.assert_close(out, x_ND - ((x_ND - mu_D) @ unit)[:, None] * unit, rtol=0, atol=1e-12)
    torch.testing.assert_close(out @ unit, (mu_D @ unit).expand(40), rtol=0, atol=1e-12)
    v = torch.randn(12, dtype=torch.float64, generator=g)
    v = v - (v @ unit) * unit
    torch.testing.assert_close(out @ v, x_ND @ v, rtol=0, atol=1e-12)


def test_edit_rows_carry_the_base_mean_of_every_real_token(tiny, tokenizer):
    from unlearn.hooks import forward_to

    model = tiny("gemma2").model
    sae = tiny_sae(64)
    target = clamp_target(sae, list(range(8)), "clamp", -5.0, hook=HOOK)
    rows = edit_differences(model, tokenizer, TEXTS, target, HOOK, batch_size=2)
    parts = []
    for text in TEXTS:  # one text at a time: no padding at all
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            x = forward_to(model, [HOOK], input_ids=ids)[HOOK][0].double()
        parts.append(x[ids[0] != tokenizer.bos_token_id])
    want = torch.cat(parts)
    assert rows.n_tokens == len(want)
    torch.testing.assert_close(rows.base_mean_D, want.mean(0), rtol=1e-5, atol=1e-5)


def test_default_relearning_layers_sit_after_a_hook_and_on_rmu_s_layer():
    from types import SimpleNamespace

    from unlearn.attacks.steps import relearn_layers

    hook = SimpleNamespace(kind="hook", hook="blocks.6.hook_resid_post")
    assert relearn_layers(hook, 18) == [7, 8]
    assert relearn_layers(SimpleNamespace(kind="hook", hook="blocks.17.hook_resid_post"), 18) == [17]
    assert relearn_layers(SimpleNamespace(kind="weights", hook="blocks.2.hook_resid_post"), 18) == [2, 3]
