"""The dilution check: prefixed questions are ordinary questions with N filler tokens before the question
text (answers untouched), N is capped by the context, and the firing rates are those of the prefixed
questions' gate statistics, checked against the paper's ρ computed by hand on the tiny model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import TOKENIZER_TEXT, Q

from unlearn.clamp.dilution import (
    SEPARATOR,
    filler_tokens,
    firing_vs_prefix,
    max_prefix,
    prefixed_questions,
    summarise,
)
from unlearn.clamp.gates import FiringLog, Gate
from unlearn.errors import UnlearnError
from unlearn.eval.prompts import cloze_context
from unlearn.sae.model import SAE

HOOK = "blocks.1.hook_resid_post"
QUESTIONS = [
    Q("Which organ pumps blood through the body?", ["heart", "liver", "kidney", "lung"], 0),
    Q("What do mitochondria make for the cell?", ["ATP", "DNA", "genes", "virus"], 0),
    Q("Where does the cell keep its DNA?", ["nucleus", "heart", "liver", "lung"], 0),
]


def test_prefixed_questions_keep_answers_and_add_about_n_tokens(tokenizer):
    filler = filler_tokens(TOKENIZER_TEXT, tokenizer, 300)
    assert len(filler) == 300
    assert prefixed_questions(QUESTIONS, filler, 0, tokenizer) == QUESTIONS
    out = prefixed_questions(QUESTIONS, filler, 40, tokenizer)
    for q, p in zip(QUESTIONS, out, strict=True):
        assert dataclasses.replace(p, question=q.question) == q  # only the question text changed
        prefix, sep, rest = p.question.rpartition(SEPARATOR)
        assert sep and rest == q.question
        assert abs(len(tokenizer.encode(prefix, add_special_tokens=False)) - 40) <= 3
    assert len({p.question for p in out}) == len(out), "questions get different filler"


def test_filler_too_short_is_a_clear_error(tokenizer):
    with pytest.raises(UnlearnError, match="offline:retain"):
        filler_tokens(["a few words"], tokenizer, 1000)


def test_prefix_is_capped_by_the_context(tiny):
    lm = tiny("gemma3")  # max_position_embeddings = 256
    cap = max_prefix(lm.model, QUESTIONS, lm.tokenizer)
    longest = max(len(lm.tokenizer.encode(q.question, add_special_tokens=False)) for q in QUESTIONS)
    assert cap == 256 - longest - 64


def _sae(lm) -> SAE:
    g = torch.Generator().manual_seed(3)
    sae = SAE(64, 16, "standard", hook_name=HOOK, dtype=torch.float64)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(64, 16, generator=g, dtype=torch.float64))
        sae.W_dec.copy_(torch.randn(16, 64, generator=g, dtype=torch.float64))
        sae.b_enc.fill_(-1.0)
        sae.b_dec.zero_()
    return sae.requires_grad_(False)


def _rho(lm, sae, q, features) -> float:
    """The paper's ρ of the cloze context at batch size 1, from the model's own hidden_states."""
    ids = lm.tokenizer(cloze_context(q.question), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        x = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[2][0].double()
    f = torch.relu(x @ sae.W_enc + sae.b_enc)[:, list(features)]
    f[0] = 0
    return (f > 0).any(-1).sum().item() / ids.shape[1]


def test_firing_vs_prefix_counts_prefixed_gate_statistics(tiny):
    lm = tiny("gemma3")
    sae = _sae(lm)
    feats = (1, 4, 7)
    rho0 = [_rho(lm, sae, q, feats) for q in QUESTIONS]
    tau = float(np.median(rho0))
    gates = {"dsg": Gate("dsg", tau, features=feats), "never": Gate("none", features=feats)}
    rates = firing_vs_prefix(lm, sae, gates, QUESTIONS, TOKENIZER_TEXT, ns=(0, 30, 5000))
    cap = max_prefix(lm.model, QUESTIONS, lm.tokenizer)
    assert sorted(rates["dsg"]) == [0, 30, cap]
    assert rates["dsg"][0] == pytest.approx(np.mean(np.array(rho0) > tau))
    filler = filler_tokens(TOKENIZER_TEXT, lm.tokenizer, max(4 * cap, 400))
    rho30 = [_rho(lm, sae, q, feats) for q in prefixed_questions(QUESTIONS, filler, 30, lm.tokenizer)]
    assert rates["dsg"][30] == pytest.approx(np.mean(np.array(rho30) > tau))
    assert all(r == 0 for r in rates["never"].values())


def test_summarise():
    got = summarise({"a": {0: 0.8, 100: 0.5, 400: 0.6}, "b": {0: 0.4, 100: 0.5}})
    assert got == {"a": {"base": 0.8, "max_drop": pytest.approx(0.3)}, "b": {"base": 0.4, "max_drop": 0.0}}


def test_diluter_scores_only_touched_prefixed_questions_and_equals_scoring_all(tiny, tmp_path):
    """A clamp point's dilution result with `reuse` (score the prefixed questions its hook touches, keep the
    unhooked `correct` of the rest) equals scoring every prefixed question under the hook, firing rates
    included, for a static clamp and for a gate that fires on some prefixed questions and not others."""
    from test_intervene import _fires_on_token, write_question_sets

    from unlearn.clamp.dilution import Diluter, accuracy_vs_prefix
    from unlearn.clamp.gates import gated
    from unlearn.clamp.intervene import EditStats, feature_edit
    from unlearn.eval.suite import EvalConfig, prepare_eval, score_questions

    lm = tiny("gemma3")
    sae, _ = _fires_on_token(lm, HOOK, " heart")
    with torch.no_grad():
        sae.b_enc[5] *= 0.5  # fires wherever the residual leans towards " heart"
    rows = [{"question": f"Which organ {i} beats{' heart' * (i % 3)}?", "choices": ["heart", "liver", "kidney", "lung"],
             "answer": i % 4} for i in range(9)]  # fmt: skip
    paths = write_question_sets(tmp_path, {"forget": rows})
    cfg = EvalConfig(forget=[str(paths["forget"])], protocol="cloze", mutual_info=False, known_only=False)
    suite = prepare_eval(lm, dataclasses.replace(cfg, batch_size=4))
    dil = Diluter(tmp_path, lm, suite, [0, 12], 9, f"questions:{paths['forget']}", hook_name=HOOK)
    gate = Gate("window", threshold=0.1, features=(5,), value=-2000.0, window=4)

    def static(log):
        return feature_edit(lm.model, sae, [5], "clamp", -2000.0, hook_name=HOOK, stats=EditStats())

    def gate_on(log):
        return gated(lm.model, sae, gate, hook_name=HOOK, record=log)

    def ll(questions):
        frame = score_questions(lm.model, lm.tokenizer, questions, dil._cfg, chat_template=False)
        return frame[[f"ll_{k}" for k in range(4)]].to_numpy()

    unhooked = {q.question: row for qs in dil.sets.values() for q, row in zip(qs, ll(qs), strict=True)}

    def unchanged(questions):  # a "correct" that is False wherever a question's log-likelihoods moved
        return np.array(
            [
                np.array_equal(row, unhooked[q.question])
                for q, row in zip(questions, ll(questions), strict=True)
            ]
        )

    same = accuracy_vs_prefix(dil.sets, unchanged)
    assert all(all(c) for c in same["correct"])
    for hook_for, tau in ((static, None), (gate_on, gate.threshold)):
        full = accuracy_vs_prefix(dil.sets, dil._score, hook_for, tau)
        assert accuracy_vs_prefix(dil.sets, dil._score, hook_for, tau, reuse=(dil.base, dil._touched)) == full
        assert full["correct"] != dil.base["correct"], "the hook must change some answers for this to test"
        moved = accuracy_vs_prefix(dil.sets, unchanged, hook_for, tau)
        assert accuracy_vs_prefix(dil.sets, unchanged, hook_for, tau, reuse=(same, dil._touched)) == moved
        assert any(not all(c) for c in moved["correct"])
    touched = [dil._touched(qs, gate_on(FiringLog())) for qs in dil.sets.values()]
    assert any(t.any() and not t.all() for t in touched), "the gate must leave some questions alone"


def test_diluter_control_rates_on_retain_questions_equal_full_scoring(tiny, tmp_path):
    """The dilution check's control (`benign`): per N, the share of prefixed retain questions the gate fires
    on equals the rate recorded while scoring them in full under the gate, the share the hook changes
    equals the share whose log-likelihoods move (a second code path: scoring, not truncated forwards), and
    the accuracy (scoring only what the hook changes) equals scoring every question, hooked and unhooked."""
    from test_intervene import _fires_on_token, write_question_sets

    from unlearn.clamp.dilution import Diluter, accuracy_vs_prefix
    from unlearn.clamp.gates import firing_rate, gated
    from unlearn.eval.suite import EvalConfig, prepare_eval, score_questions

    lm = tiny("gemma3")
    sae, _ = _fires_on_token(lm, HOOK, " heart")
    with torch.no_grad():
        sae.b_enc[5] *= 0.5
    rows = lambda word: [{"question": f"Which {word} {i}{' heart' * (i % 3)}?",  # noqa: E731
                          "choices": ["heart", "liver", "kidney", "lung"], "answer": i % 4} for i in range(9)]  # fmt: skip
    paths = write_question_sets(tmp_path, {"forget": rows("organ"), "retain": rows("city")})
    cfg = EvalConfig(forget=[str(paths["forget"])], retain=[str(paths["retain"])], protocol="cloze",
                     mutual_info=False, known_only=False, batch_size=4)  # fmt: skip
    suite = prepare_eval(lm, cfg)
    dil = Diluter(tmp_path, lm, suite, [0, 12], 9, f"questions:{paths['forget']}", hook_name=HOOK)
    assert sorted(dil.benign) == [0, 12] and all(len(qs) == 9 for qs in dil.benign.values())
    gate = Gate("window", threshold=0.1, features=(5,), value=-2000.0, window=4)
    hook_for = lambda log: gated(lm.model, sae, gate, hook_name=HOOK, record=log)  # noqa: E731

    def ll(questions, hook=None):
        record = FiringLog()
        with torch.inference_mode(), hook(record) if hook else torch.no_grad():
            frame = score_questions(lm.model, lm.tokenizer, questions, dil._cfg, chat_template=False)
        return frame[[f"ll_{k}" for k in range(4)]].to_numpy(), frame["correct"].to_numpy(bool), record

    got = dil._benign(hook_for, gate.threshold)
    assert got["prefix_tokens"] == [0, 12]
    for i, qs in enumerate(dil.benign.values()):
        clean, clean_correct, _ = ll(qs)
        hooked, hooked_correct, record = ll(qs, hook_for)
        assert got["fired"][i] == firing_rate(record.all_stats(), gate.threshold)
        assert got["touched"][i] == float((np.abs(hooked - clean) > 0).any(1).mean())
        assert dil.base["benign"]["correct"][i] == clean_correct.tolist()
        assert got["correct"][i] == hooked_correct.tolist() and got["acc"][i] == hooked_correct.mean()
    assert 0 < min(got["touched"]) and max(got["fired"]) < 1, "the gate must fire on some, not all"
    dil.point("p", hook_for, gate.threshold)
    saved = json.loads((tmp_path / "dilution" / "p.json").read_text())
    assert saved["benign"] == got
    unhooked = {q.question: row for qs in dil.benign.values() for q, row in zip(qs, ll(qs)[0], strict=True)}
    dil._score = lambda qs: np.array(
        [np.array_equal(row, unhooked[q.question]) for q, row in zip(qs, ll(qs)[0], strict=True)]
    )
    dil.base["benign"] = accuracy_vs_prefix(dil.benign, dil._score)  # "correct" = log-likelihoods unmoved
    assert all(all(c) for c in dil.base["benign"]["correct"])
    moved = dil._benign(hook_for, gate.threshold)
    assert moved["correct"] == accuracy_vs_prefix(dil.benign, dil._score, hook_for, gate.threshold)["correct"]
    assert [1 - a for a in moved["acc"]] == pytest.approx(got["touched"]) and any(moved["touched"])


def test_diluter_unhooked_baseline_is_cached_per_model_state(tiny, tmp_path, monkeypatch):
    """A second sweep of the same model on the same prefixed questions reads the unhooked dilution result
    from the cache (no question scored) and gets the very result the first computed; a changed weight or
    another filler recomputes it, and a cache entry whose stored key differs is never read."""
    from test_intervene import write_question_sets

    from unlearn.clamp.dilution import Diluter
    from unlearn.eval.suite import EvalConfig, prepare_eval

    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache"))
    lm = tiny("gemma3")
    rows = lambda word: [{"question": f"Which {word} {i} beats?", "choices": ["heart", "liver", "kidney", "lung"],  # noqa: E731
                          "answer": i % 4} for i in range(6)]  # fmt: skip
    paths = write_question_sets(tmp_path, {"forget": rows("organ"), "retain": rows("city")})
    cfg = EvalConfig(forget=[str(paths["forget"])], retain=[str(paths["retain"])], protocol="cloze",
                     mutual_info=False, known_only=False, batch_size=4)  # fmt: skip
    suite = prepare_eval(lm, cfg)
    scored = []
    real = Diluter._score
    monkeypatch.setattr(Diluter, "_score", lambda self, qs: scored.append(len(qs)) or real(self, qs))
    make = lambda run, text: Diluter(tmp_path / run, lm, suite, [0, 12], 6, text, hook_name=HOOK)  # noqa: E731
    first = make("a", f"questions:{paths['forget']}").base
    assert sum(scored) == 2 * 2 * 6  # forget and control sets, N = 0 and 12
    scored.clear()
    second = make("b", f"questions:{paths['forget']}").base
    assert scored == [] and second == first
    saved_base = json.loads((tmp_path / "b" / "dilution" / "baseline.json").read_text())
    assert saved_base["correct"] == first["correct"]
    (entry,) = (tmp_path / "cache" / "dilution").glob("*.json")
    stored = json.loads(entry.read_text())
    entry.write_text(json.dumps({**stored, "key": {**stored["key"], "model": "elsewhere"}}))
    make("c", f"questions:{paths['forget']}")  # same path, but the stored key differs: recomputed
    assert sum(scored) == 2 * 2 * 6
    scored.clear()
    make("d", f"questions:{paths['retain']}")  # another filler: other prefixed questions, another entry
    assert sum(scored) == 2 * 2 * 6
    scored.clear()
    weight = lm.model.get_decoder().layers[0].mlp.down_proj.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(1.5)
    try:
        make("e", f"questions:{paths['forget']}")
        assert sum(scored) == 2 * 2 * 6
    finally:
        with torch.no_grad():
            weight.copy_(saved)
