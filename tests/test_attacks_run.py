"""`run_attack` end to end on a tiny model: every attack runs, rows are consistent, nothing is left behind."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import Q
from test_attacks import HOOK, assert_identical, n_hooks, snapshot, tiny_sae

from unlearn.attacks.run import AttackConfig, run_attack
from unlearn.attacks.state import clamp_target, weights_target
from unlearn.errors import UnlearnError
from unlearn.eval.suite import EvalConfig, EvalSuite, EvalTask
from unlearn.hooks import forward_to
from unlearn.results import is_complete, read_json

BIO = [
    Q("Which organ pumps blood?", ["heart", "liver", "kidney", "lung"], 0),
    Q("What makes ATP?", ["mitochondria", "the nucleus", "DNA", "enzymes"], 0),
    Q("What holds DNA?", ["a wall", "the nucleus", "ATP", "a lung"], 1),
    Q("What speeds up reactions?", ["water", "light", "enzymes", "sand"], 2),
    Q("Which cells carry oxygen?", ["nerve", "red blood", "skin", "bone"], 1),
    Q("What is a virus made of?", ["proteins and genes", "rock", "metal", "glass"], 0),
]
RETAIN = [
    Q("Which is a language?", ["Python", "a tree", "a cat", "rain"], 0, "computer_science"),
    Q("Where is Paris?", ["France", "Peru", "Chad", "Laos"], 0, "geography"),
    Q("What did Rome build?", ["roads", "rockets", "chips", "phones"], 0, "history"),
]


@pytest.fixture
def setup(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    lm = tiny("gemma3")
    suite = EvalSuite(lm.tokenizer, EvalConfig(protocol="cloze", batch_size=8),
                      [EvalTask("bio", "forget", BIO), EvalTask("retain", "retain", RETAIN)], False)  # fmt: skip
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"question": f"{q.question} (dev {i})", "choices": q.choices,
                                         "answer": q.answer}) + "\n" for i, q in enumerate(BIO * 3)))  # fmt: skip
    cfg = AttackConfig(relearn_k=[2], relearn_steps=[2], relearn_layers=[1], shots=2, pad_tokens=16,
                       direction_tokens=64, probe_layers=[1, 2], probe_train=[str(train)])  # fmt: skip
    return lm, suite, cfg


def _consistent(row, base, unl):
    rec = row["forget_recovered"]
    gap = base["forget"]["value"] - unl["forget"]["value"]
    if rec is None:
        assert abs(gap) * len(BIO) < 1
    else:
        assert rec["value"] == pytest.approx((row["forget"]["value"] - unl["forget"]["value"]) / gap)


def test_clamp_target_every_attack(setup):
    lm, suite, cfg = setup
    sae = tiny_sae(64)
    target = clamp_target(sae, list(range(8)), "clamp", -50.0, hook=HOOK)
    before, hooks = snapshot(lm.model), n_hooks(lm.model)
    run_dir = run_attack(cfg, lm=lm, suite=suite, unlearned=target)
    assert_identical(lm.model, before)
    assert n_hooks(lm.model) == hooks
    metrics = read_json(run_dir / "metrics.json")
    assert read_json(run_dir / "config.json")["target_kind"] == "hook"
    rows = metrics["rows"]
    attacks = [r["attack"] for r in rows]
    assert attacks == ["base", "unlearned", "hook-removal", "relearn", "relearn", "few-shot", "padding",
                       "direction", "direction", "direction", "probe"]  # fmt: skip
    assert is_complete(run_dir) and not (run_dir / "RUNNING").exists()  # open_run's lifecycle
    config = read_json(run_dir / "config.json")
    assert config["command"] == "attack" and config["target_name"] == target.name and config["seed"] == 0
    for row in rows[2:]:
        assert {"seconds", "steps", "tokens", "examples"} <= set(row["cost"]) and "seed" in row
    direction = [r for r in rows if r["attack"] == "direction"]
    assert 0 < direction[0]["edited_tokens"] <= direction[0]["tokens"]
    assert direction[1]["setting"]["state"] == "base model (control)" and direction[2]["setting"][
        "basis"
    ].startswith("W_dec")
    base, unl = rows[0], rows[1]
    assert rows[2]["forget"] == base["forget"]  # hook removal = the base model, shown honestly
    for row in rows[2:-1]:
        _consistent(row, base, unl)
        assert row["cost"]["seconds"] >= 0
    relearn = [r for r in rows if r["attack"] == "relearn"]
    assert {r["setting"]["texts"] for r in relearn} == {"forget", "retain"}
    assert all(r["cost"]["steps"] == 2 and r["cost"]["tokens"] > 0 for r in relearn)
    assert all(r["loss"]["before"] is not None and r["loss"]["after"] is not None for r in relearn)
    probe = rows[-1]["probe"]["per_layer"]
    assert [p[0] for p in probe] == [1, 2] and all(0 <= p[1] <= 1 and 0 <= p[2] <= 1 for p in probe)


def test_weights_target_is_restored_and_has_no_hook_removal(setup):
    lm, suite, cfg = setup
    name = "model.layers.1.mlp.down_proj.weight"
    before = snapshot(lm.model)
    g = torch.Generator().manual_seed(0)
    target = weights_target({name: before[name] + torch.randn(before[name].shape, generator=g)}, HOOK)
    cfg.attacks = ["hook-removal", "direction"]
    cfg.direction_control = False
    run_dir = run_attack(cfg, lm=lm, suite=suite, unlearned=target)
    assert_identical(lm.model, before)
    rows = read_json(run_dir / "metrics.json")["rows"]
    assert [r["attack"] for r in rows] == ["base", "unlearned", "direction"]  # no hook to remove, no span
    assert rows[2]["edited_tokens"] > 0  # the swapped weights moved activations at the hook a lot
    for row in rows[2:]:
        _consistent(row, rows[0], rows[1])


def _logits(model, enc, ctx=None):
    from contextlib import nullcontext

    with torch.inference_mode(), ctx or nullcontext():
        return model(**enc).logits


def test_intervene_point_target_rebuilds_the_points_own_hook(setup):
    """Static, gated and random-direction points of a real `intervene` run, and a typical-unit point:
    the target's logits equal those under intervene's / gates' own context managers, bit for bit."""
    from unlearn.attacks.state import target_from_spec
    from unlearn.clamp.controls import random_rotation
    from unlearn.clamp.gates import Gate, gated
    from unlearn.clamp.intervene import InterveneConfig, feature_edit, run_intervene
    from unlearn.results import write_json

    lm, _, _ = setup
    ecfg = EvalConfig(protocol="cloze", batch_size=8, retain=["offline:retain"], split="test", limit=6)
    suite = EvalSuite(lm.tokenizer, ecfg, [EvalTask("bio", "forget", BIO), EvalTask("retain", "retain", RETAIN)],
                      False)  # fmt: skip
    sae = tiny_sae(64)
    texts = [q.question for q in BIO + RETAIN]
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():  # thresholds at the 80th percentile: features fire on some tokens, gates vary
        x_ND = forward_to(lm.model, [HOOK], **enc)[HOOK][enc["attention_mask"].bool()]
        sae.threshold.copy_((x_ND @ sae.W_enc + sae.b_enc).quantile(0.8, dim=0))
    cfg = InterveneConfig(feature_ids=list(range(6)), n_features=[6], scales=[-5.0], gates=["none", "window"],
                          controls=["random-direction"], clamp_unit="absolute", gate_fpr=0.9, run_id="iv")  # fmt: skip
    run_dir = run_intervene(cfg, lm=lm, sae=sae, suite=suite)
    points = {p.stem: read_json(p) for p in (run_dir / "points").glob("*.json")}
    assert {"clamp_n6_s-5", "clamp_n6_s-5_gate-window"} <= set(points)
    typical = dict(points["clamp_n6_s-5"], clamp_unit="typical", clamp_values=[-1.0, -2.0, -3, -4, -5, -6])
    write_json(run_dir / "points" / "typical.json", typical)
    points["typical"] = typical
    base = _logits(lm.model, enc)
    got = {}
    for pid, p in points.items():
        before = n_hooks(lm.model)
        target = target_from_spec(f"intervene:{run_dir}/{pid}", lm, sae=sae)
        assert target.kind == "hook" and target.hook == HOOK and target.info["point"] == pid
        dirs = None
        if p["control"] == "random-direction":
            dirs = sae.W_dec[p["features"]] @ random_rotation(sae.d_in, p["seed"], dtype=sae.W_dec.dtype)
        if p["gate"]:
            ref = gated(lm.model, sae, Gate.from_json(p["gate"]), hook_name=HOOK, directions_KD=dirs)
        else:
            value = torch.tensor(p["clamp_values"], dtype=torch.float64) if pid == "typical" else p["scale"]
            ref = feature_edit(
                lm.model, sae, p["features"], p["mode"], value, hook_name=HOOK, directions_KD=dirs
            )
        got[pid] = _logits(lm.model, enc, target(lm.model))
        assert torch.equal(got[pid], _logits(lm.model, enc, ref)), pid
        assert n_hooks(lm.model) == before
        assert not torch.equal(got[pid], base), pid  # the hook does edit these texts
    # the points differ from each other on these texts, so a target that dropped the gate, the control's
    # rotation or the per-feature values would fail above
    ids = list(got)
    assert all(not torch.equal(got[a], got[b]) for i, a in enumerate(ids) for b in ids[i + 1 :])
    with pytest.raises(UnlearnError, match="No intervene point"):
        target_from_spec(f"intervene:{run_dir}/clamp_n99", lm, sae=sae)
    with pytest.raises(UnlearnError, match="Unknown --target"):
        target_from_spec("clamps", lm, sae=sae)


def test_run_attacks_shares_the_base_evaluation_across_targets(setup):
    from unlearn.attacks.run import ATTACKS, DEMO_ATTACKS, demo_config, run_attacks

    lm, suite, _ = setup
    assert set(DEMO_ATTACKS) <= set(ATTACKS) and "probe" not in DEMO_ATTACKS
    demo = demo_config()
    assert (
        demo.relearn_k == [10]
        and demo.relearn_corpora == ["forget"]
        and demo.limit == 40
        and list(demo.attacks) == list(DEMO_ATTACKS)
    )
    calls = []
    run = suite.run
    suite.run = lambda model, desc=None, **kw: calls.append(desc) or run(model, desc=desc, **kw)
    sae = tiny_sae(64)
    targets = [clamp_target(sae, list(range(8)), "clamp", -50.0, hook=HOOK, name="a"),
               clamp_target(sae, list(range(4)), "clamp", -50.0, hook=HOOK, name="b")]  # fmt: skip
    cfg = demo_config(attacks=["hook-removal", "padding"], pad_tokens=16, run_id="demo")
    paths = run_attacks(cfg, targets, lm=lm, suite=suite)
    assert [p.name for p in paths] == ["demo-0", "demo-1"] and all(is_complete(p) for p in paths)
    assert calls.count("base") == 1 and "a" in calls and "b" in calls
    rows = [read_json(p / "metrics.json")["rows"] for p in paths]
    assert rows[0][0]["forget"] == rows[1][0]["forget"]  # one base outcome
    assert [r["attack"] for r in rows[1]] == ["base", "unlearned", "hook-removal", "padding"]


def test_attack_accuracies_are_on_the_known_subset():
    import pandas as pd

    from unlearn.attacks.run import _role_values
    from unlearn.eval.suite import EvalOutcome

    frame = pd.DataFrame({"role": ["forget"] * 4 + ["retain"], "correct": [1, 0, 0, 1, 1],
                          "known": [True, True, False, False, True]})  # fmt: skip
    out = EvalOutcome(block=None, questions=frame)
    assert list(_role_values(out, "forget")) == [1.0, 0.0]
    no_known = EvalOutcome(block=None, questions=frame.assign(known=None))
    assert list(_role_values(no_known, "forget")) == [1.0, 0.0, 0.0, 1.0]


def test_bad_direction_ablation_is_a_clear_error_before_any_work():
    from unlearn.attacks.run import check_attacks
    from unlearn.errors import UnlearnError

    with pytest.raises(UnlearnError, match="--direction-ablation must be mean or zero"):
        check_attacks(AttackConfig(direction_ablation="half"))


def test_run_attacks_hook_layer_cache_gives_the_same_rows(setup, monkeypatch):
    """Hook targets share one hook-layer cache across `run_attacks` (a weights target between them runs
    outside it): every row equals the uncached run's, costs aside, and later passes hit the cache."""
    from unlearn.attacks import run as run_mod

    lm, suite, cfg = setup
    made = []

    class Spy(run_mod.HookLayerCache):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(run_mod, "HookLayerCache", Spy)
    sae = tiny_sae(64)
    name = "model.layers.1.mlp.down_proj.weight"
    before = snapshot(lm.model)
    g = torch.Generator().manual_seed(1)
    targets = [clamp_target(sae, list(range(8)), "clamp", -50.0, hook=HOOK, name="a"),
               weights_target({name: before[name] + torch.randn(before[name].shape, generator=g)}, HOOK),
               clamp_target(sae, list(range(4)), "clamp", -50.0, hook=HOOK, name="b")]  # fmt: skip
    cfg.attacks, cfg.direction_control, cfg.relearn_corpora = (
        ["few-shot", "direction", "relearn"],
        False,
        ["retain"],
    )
    rows = {}
    for cached in (False, True):
        one = dataclasses.replace(cfg, hook_cache=cached, run_id=f"c{int(cached)}")
        paths = run_mod.run_attacks(one, targets, lm=lm, suite=suite)
        rows[cached] = [[{k: v for k, v in r.items() if k != "cost"} for r in read_json(p / "metrics.json")["rows"]]
                        for p in paths]  # fmt: skip
        assert_identical(lm.model, before)
    assert len(made) == 1 and made[0].stats.hits > 0 and made[0].stats.misses + made[0].stats.disk_hits > 0
    assert rows[True] == rows[False]
    assert {r["attack"] for r in rows[True][0]} == {"base", "unlearned", "few-shot", "direction", "relearn"}


def test_unlearned_row_scores_only_touched_questions_and_equals_the_full_evaluation(setup, monkeypatch):
    """An SAE target's own evaluation reuses the base's scores where its hook changes nothing: the
    per-question frame equals scoring every question under the target, for a static and a gated clamp."""
    import pandas as pd

    from unlearn.attacks.run import _Runner
    from unlearn.clamp.gates import Gate, gated
    from unlearn.eval import suite as suite_mod

    lm, suite, cfg = setup
    sae = tiny_sae(64)
    with torch.no_grad():  # high thresholds: the features fire on some questions only
        sae.threshold.fill_(5.0)
    with torch.inference_mode():
        base = suite.run(lm.model, desc="base")
    scored = []
    real = suite_mod.score_questions
    monkeypatch.setattr(suite_mod, "score_questions",
                        lambda m, t, qs, *a, **kw: scored.append(len(qs)) or real(m, t, qs, *a, **kw))  # fmt: skip
    gate = Gate("window", 0.05, features=tuple(range(8)), value=-50.0, window=4)
    targets = [clamp_target(sae, list(range(8)), "clamp", -50.0, hook=HOOK, name="static"),
               clamp_target(sae, list(range(8)), "clamp", -50.0, hook=HOOK, name="window",
                            gate=lambda m: gated(m, sae, gate, hook_name=HOOK))]  # fmt: skip
    n_all = len(BIO) + len(RETAIN)
    for target in targets:
        scored.clear()
        runner = _Runner(lm, suite, target, cfg, console=None, base=base)
        n_scored = sum(scored)
        with torch.inference_mode(), target(lm.model):
            full = suite.run(lm.model, desc="full")
        assert 0 < n_scored < n_all, target.name  # some questions touched, not all
        cols = [c for c in full.questions.columns if c != "index"]
        got = runner.unlearned.questions[cols].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, full.questions[cols].reset_index(drop=True), check_dtype=False)
        assert not got["ll_0"].equals(base.questions["ll_0"]), target.name  # the hook does change scores
