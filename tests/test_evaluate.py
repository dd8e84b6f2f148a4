"""The shared evaluator: suites from question files, known-subset cache, hooks honoured, run folder."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from unlearn import hooks
from unlearn.errors import UnlearnError
from unlearn.eval.run import EvalRunConfig, run_eval
from unlearn.eval.suite import EvalConfig, eval_config_from_preset, known_mask, load_tasks, prepare_eval
from unlearn.presets import get_preset
from unlearn.results import EvalBlock, read_json

ROWS = [
    {"question": "Which organ pumps blood?", "choices": ["heart", "liver", "kidney", "lung"], "answer": 0,
     "subject": "biology"},
    {"question": "What does the nucleus hold?", "choices": ["ATP", "DNA", "water", "salt"], "answer": 1,
     "subject": "biology"},
    {"question": "Which is a virus?", "choices": ["the cell", "enzymes", "flu", "genes"], "answer": 2,
     "subject": "biology"},
    {"question": "Where is Paris?", "choices": ["Spain", "Italy", "Peru", "France"], "answer": 3,
     "subject": "geography"},
    {"question": "Which river is long?", "choices": ["Nile", "a pond", "a lake", "the sea"], "answer": 0,
     "subject": "geography"},
    {"question": "Who aged?", "choices": ["the old", "the young", "a baby", "a child"], "answer": 0,
     "subject": "human_aging"},
]  # fmt: skip


@pytest.fixture
def qfiles(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    forget, retain = tmp_path / "forget.jsonl", tmp_path / "retain.jsonl"
    forget.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3]))
    retain.write_text("".join(json.dumps(r) + "\n" for r in ROWS[3:]))
    return str(forget), str(retain)


def count_forwards(model):
    calls = []
    handle = model.get_decoder().register_forward_pre_hook(lambda *_: calls.append(1))
    return calls, handle


def test_suite_scores_tasks_split_by_subject(tiny, qfiles):
    lm = tiny("gemma2")
    forget, retain = qfiles
    cfg = EvalConfig(forget=[forget], retain=[retain], protocol="cloze", batch_size=4)
    suite = prepare_eval(lm, cfg)
    assert [t.name for t in suite.tasks] == [forget, f"{retain}/geography", f"{retain}/human_aging"]
    out = suite.run(lm.model)
    assert [s.n for s in out.block.scores] == [3, 2, 1]
    assert {s.protocol for s in out.block.scores} == {"cloze"} and out.block.subset == "all"
    df = out.questions
    for score in out.block.scores:
        rows = df[df.task == score.task]
        assert score.acc == pytest.approx(rows.correct.mean()) and score.acc_norm == pytest.approx(
            rows.correct_norm.mean()
        )
    assert out.block.retain_acc == pytest.approx(df[df.role == "retain"].correct.mean())
    lls = df[[f"ll_{k}" for k in range(4)]].to_numpy()
    np.testing.assert_array_equal(df.pred, lls.argmax(1))


def test_hooks_active_during_run_are_honoured(tiny, qfiles):
    lm = tiny("gemma3")
    suite = prepare_eval(lm, EvalConfig(forget=[qfiles[0]], protocol="cloze"))
    plain = suite.run(lm.model).questions
    with hooks.edit(lm.model, "blocks.1.hook_resid_post", lambda x: x * 0 + 3.0):
        hooked = suite.run(lm.model).questions
    again = suite.run(lm.model).questions
    pd.testing.assert_frame_equal(plain, again)  # the hook is gone after the block
    cols = [f"ll_{k}" for k in range(4)]
    assert np.abs(plain[cols].to_numpy() - hooked[cols].to_numpy()).min() > 1e-3


def test_known_subset_is_cached_and_keyed_by_weights(tiny, qfiles):
    lm = tiny("gemma2")
    cfg = EvalConfig(forget=[qfiles[0]], protocol="letter", known_only=True, chat_template=True)
    task = load_tasks(cfg)[0]
    calls, handle = count_forwards(lm.model)
    try:
        first = known_mask(lm, task, cfg, chat_template=True)
        n_first = len(calls)
        assert n_first >= 1
        second = known_mask(lm, task, cfg, chat_template=True)
        assert len(calls) == n_first  # cache hit: no forward at all
        np.testing.assert_array_equal(first, second)
        weight = lm.model.get_decoder().layers[0].mlp.down_proj.weight
        with torch.no_grad():
            weight.add_(1.0)
            try:
                known_mask(lm, task, cfg, chat_template=True)  # changed weights: recomputed
            finally:
                weight.sub_(1.0)
        assert len(calls) > n_first
        from unlearn.eval.known import _known_key
        from unlearn.paths import keyed_cache_path

        config = lm.model.config
        attn, key = config._attn_implementation, _known_key(lm, task, cfg, True)
        config._attn_implementation = "sdpa" if attn != "sdpa" else "eager"
        try:  # another attention implementation rounds differently: another cache entry
            other = _known_key(lm, task, cfg, True)
        finally:
            config._attn_implementation = attn
        assert other["numerics"]["attn"] != key["numerics"]["attn"]
        assert keyed_cache_path("known", other) != keyed_cache_path("known", key)
        assert not keyed_cache_path("known", other).exists()
    finally:
        handle.remove()
    suite = prepare_eval(lm, cfg)
    out = suite.run(lm.model)
    assert out.block.subset == "known" and out.block.scores[0].n == int(first.sum())


def test_permutation_accuracy_is_mean_over_orders(tiny, qfiles):
    lm = tiny("gemma")
    cfg = EvalConfig(forget=[qfiles[0]], protocol="letter", permutations=True, chat_template=False)
    out = prepare_eval(lm, cfg).run(lm.model)
    score = out.block.scores[0]
    assert score.protocol == "letter-perm24"
    assert score.acc == pytest.approx(out.questions.frac_correct.mean())
    assert set(np.round(out.questions.frac_correct * 24, 6)) <= set(range(25))


def test_user_errors(tiny, qfiles):
    lm = tiny("gemma2")
    lm.tokenizer.chat_template, saved = None, lm.tokenizer.chat_template
    try:
        with pytest.raises(UnlearnError, match="no-chat-template"):
            prepare_eval(lm, EvalConfig(forget=[qfiles[0]], chat_template=True))
    finally:
        lm.tokenizer.chat_template = saved
    with pytest.raises(UnlearnError, match="--tasks"):
        load_tasks(EvalConfig())
    with pytest.raises(UnlearnError, match="twice"):
        load_tasks(EvalConfig(forget=[qfiles[0]], retain=[qfiles[0]]))
    with pytest.raises(UnlearnError, match="protocol"):
        prepare_eval(lm, EvalConfig(forget=[qfiles[0]], protocol="logits")).run(lm.model)


def test_config_from_preset():
    cfg = eval_config_from_preset(get_preset("gemma-2-2b-it"), known_only=True, limit=None)
    assert (
        cfg.protocol == "letter"
        and cfg.chat_template is True
        and cfg.known_only
        and cfg.forget == ["wmdp-bio"]
    )
    assert len(cfg.retain) == 4
    assert eval_config_from_preset(get_preset("gemma-3-270m")).protocol == "cloze"


def test_run_eval_writes_run_folder(tiny_folder, qfiles, tmp_path):
    forget, retain = qfiles
    run_dir = run_eval(EvalRunConfig(model=str(tiny_folder("gemma2")), tasks=[forget, retain], protocol="cloze",
                                     device="cpu", run_id="t1"))  # fmt: skip
    assert run_dir == tmp_path / "results" / "eval" / "t1"
    config = read_json(run_dir / "config.json")
    assert config["command"] == "eval" and config["protocol"] == "cloze" and config["preset"] is None
    block = EvalBlock.from_dict(read_json(run_dir / "metrics.json"))
    assert sum(s.n for s in block.scores) == len(ROWS)
    assert len(pd.read_csv(run_dir / "questions.csv")) == len(ROWS)
    with pytest.raises(UnlearnError):
        run_eval(EvalRunConfig(model=str(tiny_folder("gemma2")), tasks=[forget], protocol="cloze", device="cpu",
                               rmu=str(tmp_path / "no-such-run")))  # fmt: skip


def test_weight_fingerprint_indexes_large_tensors_in_range():
    """A float32 linspace would round the last index of a 167,772,160-element tensor past its end."""
    from torch import nn

    from unlearn.eval.suite import weight_fingerprint

    big = nn.Module()
    big.register_parameter("w", nn.Parameter(torch.zeros(262_144, 640), requires_grad=False))
    assert len(weight_fingerprint(big)) == 16


def test_known_means_right_in_all_24_orders(tiny, qfiles, monkeypatch):
    """A fake scorer that knows each answer but carries a per-question position bias: one question is
    right in every order, one only when its answer sits at B (where it is unpermuted, so a
    one-order rule would call it known), one never. Expected from a brute-force loop over
    `itertools.permutations`, not from the evaluator's own order list."""
    import itertools
    import re

    from unlearn.eval import known

    lm = tiny("gemma3")
    qs = load_tasks(EvalConfig(forget=[qfiles[0]]))[0].questions  # answers 0, 1, 2
    bias = {0: [0.0, 0, 0, 0], 1: [0.0, 2, 0, 0], 2: [0.0, 0, 0, 2]}  # question -> per-letter bias

    def fake_scorer(prompts):
        out = torch.zeros(len(prompts), 4)
        for n, ids in enumerate(prompts):
            text = lm.tokenizer.decode(ids)
            qi = next(i for i, q in enumerate(qs) if q.question in text)
            shown = re.findall(r"^([ABCD])\. (.*)$", text, flags=re.M)
            for pos, (_, choice) in enumerate(shown):
                out[n, pos] = float(choice.strip() == qs[qi].choices[qs[qi].answer]) + bias[qi][pos]
        return out

    monkeypatch.setattr(known, "make_letter_scorer", lambda *a, **k: fake_scorer)
    cfg = EvalConfig(forget=[qfiles[0]], protocol="letter", known_only=True, chat_template=False)
    got = known_mask(lm, load_tasks(cfg)[0], cfg, chat_template=False)

    want = []
    for qi, q in enumerate(qs):
        right = []
        for order in itertools.permutations(range(4)):
            at = order.index(q.answer)  # where the answer is shown
            scores = [float(p == at) + bias[qi][p] for p in range(4)]
            right.append(int(np.argmax(scores)) == at)
        want.append(all(right))
    assert want == [True, False, False]
    assert got.tolist() == want
    one_order = [int(np.argmax([float(p == q.answer) + bias[qi][p] for p in range(4)])) == q.answer
                 for qi, q in enumerate(qs)]  # fmt: skip
    assert one_order == [True, True, False]  # a one-order rule would wrongly call question 1 known


def test_eval_command_with_lm_eval_mmlu_style_matches_a_direct_loglikelihood(
    tiny_folder, tiny, qfiles, tmp_path
):
    """`unlearn eval --protocol lm-eval` (lm-eval's MMLU prompt, in-process) through the CLI; its answers
    equal a hand-computed argmax of log p(" A".." D" | prompt) on the same model."""
    from typer.testing import CliRunner

    from unlearn.cli import app
    from unlearn.eval.prompts import subject_phrase
    from unlearn.results import is_complete

    forget, _ = qfiles
    folder = str(tiny_folder("gemma2"))
    res = CliRunner().invoke(app, ["eval", "--model", folder, "--tasks", forget, "--protocol", "lm-eval",
                                   "--no-chat-template", "--device", "cpu", "--run-id", "cli"])  # fmt: skip
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "results" / "eval" / "cli"
    assert is_complete(run_dir) and read_json(run_dir / "config.json")["protocol"] == "lm-eval"
    got = pd.read_csv(run_dir / "questions.csv")["pred"].tolist()

    lm = tiny("gemma2")
    tok = lm.tokenizer
    head = (
        f"The following are multiple choice questions (with answers) about {subject_phrase('biology')}.\n\n"
    )
    want = []
    for r in ROWS[:3]:
        ctx = (
            head
            + r["question"].strip()
            + "".join(f"\n{L}. {c}" for L, c in zip("ABCD", r["choices"], strict=True))
            + "\nAnswer:"
        )
        ctx_ids = tok(ctx).input_ids
        lls = []
        for letter in "ABCD":
            ids = tok(ctx + " " + letter).input_ids
            with torch.no_grad():
                logp = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0].double(), -1)
            lls.append(sum(logp[i - 1, ids[i]].item() for i in range(len(ctx_ids), len(ids))))
        want.append(int(np.argmax(lls)))
    assert got == want
    block = EvalBlock.from_dict(read_json(run_dir / "metrics.json"))
    assert block.scores[0].acc == pytest.approx(
        np.mean([w == r["answer"] for w, r in zip(want, ROWS[:3], strict=True)])
    )


def _direct_ll(model, tokenizer, context: str, choices) -> np.ndarray:
    """Summed log-probs of each choice after `context` from one unpacked full-model forward per choice."""
    from unlearn.eval.prompts import cloze_continuation, encode_pair

    out = []
    for c in choices:
        ctx, cont = encode_pair(context, cloze_continuation(c), tokenizer)
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        out.append(sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)))
    return np.array(out)


def test_cloze_known_rule_equals_direct_computation_of_its_three_conditions(tiny, qfiles):
    from unlearn.eval.prompts import cloze_context

    lm = tiny("gemma3")
    forget, retain = qfiles
    questions = load_tasks(EvalConfig(forget=[forget], retain=[retain]))
    qs = [q for t in questions for q in t.questions]
    ll = np.stack([_direct_ll(lm.model, lm.tokenizer, cloze_context(q.question), q.choices) for q in qs])
    prior = np.stack([_direct_ll(lm.model, lm.tokenizer, "Question: \nAnswer:", q.choices) for q in qs])
    ans = np.array([q.answer for q in qs])
    right = ll.argmax(1) == ans
    margin = ll[np.arange(len(qs)), ans] - np.where(np.eye(4)[ans] > 0, -np.inf, ll).max(1)
    not_prior = prior.argmax(1) != ans
    margins = [0.0, float(np.median(margin[right])) if right.any() else 0.0]
    for m in margins:
        cfg = EvalConfig(forget=[forget], retain=[retain], protocol="cloze", known_only=True, known_margin=m)
        suite = prepare_eval(lm, cfg)
        got = np.concatenate([t.known for t in suite.tasks])
        np.testing.assert_array_equal(got, right & (margin >= m) & not_prior)
        out = suite.run(lm.model)
        df = out.questions
        np.testing.assert_allclose(df[[f"ll_{k}" for k in range(4)]].to_numpy(), ll, atol=2e-4)
        np.testing.assert_allclose(df[[f"prior_ll_{k}" for k in range(4)]].to_numpy(), prior, atol=2e-4)
        np.testing.assert_array_equal(df["pred_mi"], (ll - prior).argmax(1))
        np.testing.assert_array_equal(df["known"].astype(bool), got)
        for s in out.block.scores:
            rows = df[df.task == s.task]
            k = rows.known.astype(bool)
            assert s.n == k.sum() and s.n_all == len(rows) and s.split == "all"
            assert s.acc_all == pytest.approx(rows.correct.mean())
            if k.any():
                assert s.acc == pytest.approx(rows.correct[k].mean())
                assert s.acc_mi == pytest.approx(rows.correct_mi[k].mean())
        f = df[df.role == "forget"]
        assert out.block.forget_acc_all == pytest.approx(f.correct.mean())
        lo, hi = out.block.forget_ci_all
        assert lo <= out.block.forget_acc_all <= hi

        # without the mutual-information pass: the same known subset (the rule still scores the prior),
        # the same answers, and no prior columns or acc_mi
        lean = prepare_eval(lm, dataclasses.replace(cfg, mutual_info=False))
        np.testing.assert_array_equal(np.concatenate([t.known for t in lean.tasks]), got)
        lean_df = lean.run(lm.model).questions
        np.testing.assert_array_equal(lean_df["pred"], df["pred"])
        assert "prior_ll_0" not in lean_df and "correct_mi" not in lean_df


def test_cloze_known_excludes_each_failed_condition():
    from unlearn.eval.suite import answer_margin, cloze_known

    ll = np.array([[-1.0, -3.0, -4, -5], [-1.0, -1.2, -4, -5], [-1.0, -3.0, -4, -5], [-2.0, -1.0, -4, -5]])
    frame = pd.DataFrame({"answer": [0, 0, 0, 0], "pred": ll.argmax(1), "pred_prior": [1, 2, 0, 2]})
    frame["correct"] = frame["pred"] == frame["answer"]
    frame["margin"] = answer_margin(ll, frame["answer"].to_numpy())
    np.testing.assert_allclose(frame["margin"], [2.0, 0.2, 2.0, -1.0])
    # row 1: margin too small, row 2: the prior already picks the answer, row 3: wrong
    np.testing.assert_array_equal(cloze_known(frame, 0.5), [True, False, False, False])
    np.testing.assert_array_equal(cloze_known(frame, 0.0), [True, True, False, False])


def test_split_is_applied_to_every_source_and_recorded(tiny, qfiles):
    from unlearn.data import load_questions
    from unlearn.eval.known import _known_key
    from unlearn.eval.suite import with_split

    assert with_split("offline:bio", "test") == "offline:bio@test"
    assert with_split("offline:bio@dev", "test") == "offline:bio@dev"  # an explicit part wins
    assert with_split("offline:bio", "all") == "offline:bio"
    with pytest.raises(UnlearnError, match="dev"):
        with_split("offline:bio", "train")
    cfg = EvalConfig(forget=["offline:bio"], retain=["offline:retain"], protocol="cloze", split="dev")
    tasks = load_tasks(cfg)
    assert tasks[0].name == "offline:bio@dev" and {t.split for t in tasks} == {"dev"}
    want = {q.question for q in load_questions("offline:bio@dev")}
    assert {q.question for q in tasks[0].questions} == want
    assert all(t.name.startswith("offline:retain@dev/") for t in tasks[1:])
    lm = tiny("gemma3")
    test_task = load_tasks(EvalConfig(forget=["offline:bio"], split="test"))[0]
    assert _known_key(lm, tasks[0], cfg, False)["split"] == "dev"
    assert _known_key(lm, test_task, cfg, False)["split"] == "test"
    small = EvalConfig(forget=[qfiles[0]], protocol="cloze", split="test", limit=2)
    out = prepare_eval(lm, small).run(lm.model)
    assert out.block.split == "test" and out.block.scores[0].split == "test"


def test_old_results_json_without_new_fields_loads():
    old = {"protocol": "cloze", "subset": "known", "forget_acc": 0.5, "retain_acc": 0.9,
           "scores": [{"task": "offline:bio", "role": "forget", "protocol": "cloze", "subset": "known",
                       "n": 10, "acc": 0.5, "acc_norm": None}]}  # fmt: skip
    block = EvalBlock.from_dict(old)
    assert block.split is None and block.forget_ci is None and block.forget_acc == 0.5
    s = block.scores[0]
    assert s.split is None and s.ci is None and s.acc_all is None and s.n_all is None and s.acc == 0.5
    newer = json.loads(json.dumps(old | {"future_field": 1}))
    assert EvalBlock.from_dict(newer).retain_acc == 0.9


@pytest.mark.parametrize("mutual_info", [False, True])
def test_unhooked_run_reads_the_known_pass_exactly(tiny, qfiles, monkeypatch, mutual_info):
    """The baseline comes from the known-subset pass (cold and cached) and equals a fresh scoring;
    a hook or changed weights are always scored afresh."""
    from unlearn.eval import suite as evaluate

    lm = tiny("gemma3")
    forget, retain = qfiles
    cfg = EvalConfig(forget=[forget], retain=[retain], protocol="cloze", known_only=True,
                     mutual_info=mutual_info, batch_size=2)  # fmt: skip
    cold = evaluate.prepare_eval(lm, cfg)
    twin = evaluate.EvalSuite(cold.tokenizer, cold.cfg, cold.tasks, cold.chat_template, weights=None)
    scored = twin.run(lm.model).questions  # no fingerprint: always scores
    calls = []
    real = evaluate.score_questions
    monkeypatch.setattr(evaluate, "score_questions", lambda *a, **k: calls.append(1) or real(*a, **k))
    from_known = cold.run(lm.model).questions
    warm = evaluate.prepare_eval(lm, cfg)  # from the cache
    from_cache = warm.run(lm.model).questions
    assert not calls
    with hooks.edit(lm.model, "blocks.1.hook_resid_post", lambda x: x * 0 + 3.0):
        hooked = warm.run(lm.model).questions
    assert calls
    n_hooked = len(calls)
    weight = lm.model.get_decoder().layers[0].mlp.down_proj.weight
    with torch.no_grad():
        weight.add_(1.0)
        try:
            changed = warm.run(lm.model).questions
        finally:
            weight.sub_(1.0)
    assert len(calls) > n_hooked
    pd.testing.assert_frame_equal(from_known, scored, check_exact=True)
    pd.testing.assert_frame_equal(from_cache, scored, check_exact=True)
    assert ("prior_ll_0" in scored) == mutual_info
    cols = [f"ll_{k}" for k in range(4)]
    for other in (hooked, changed):
        assert np.abs(other[cols].to_numpy() - scored[cols].to_numpy()).max() > 1e-3


def test_reused_rows_overwrite_a_column_the_csv_read_back_as_all_nan(tmp_path):
    """A baseline frame read back from questions/baseline.csv has an empty text column (no subjects) as
    all-NaN floats; a resumed sweep overwrites its touched rows with strings and bools."""
    from unlearn.eval.suite import overwrite_rows

    pd.DataFrame({"index": [0, 1, 2], "subject": ["", "", ""], "correct": [True, False, True]}).to_csv(
        tmp_path / "baseline.csv", index=False
    )
    frame = pd.read_csv(tmp_path / "baseline.csv")
    assert frame["subject"].isna().all() and frame["subject"].dtype == "float64"  # what the CSV gives back
    scored = pd.DataFrame({"subject": ["a", "b"], "correct": [False, False], "pred": [3, 1]})
    overwrite_rows(frame, np.array([True, False, True]), scored)
    assert frame["subject"].tolist()[::2] == ["a", "b"] and pd.isna(frame["subject"][1])
    assert frame["correct"].tolist() == [False, False, False]
    assert frame["pred"].tolist()[::2] == [3, 1]
