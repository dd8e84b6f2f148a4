"""`run_attack` end to end on a tiny model: every attack runs, rows are consistent, nothing is left behind."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import Q
from test_attacks import HOOK, assert_identical, n_hooks, snapshot, tiny_sae

from unlearn.attacks.run import AttackConfig, run_attack
from unlearn.attacks.state import clamp_target, weights_target
from unlearn.evaluate import EvalConfig, EvalSuite, EvalTask
from unlearn.results import read_json

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
                       "direction", "direction", "probe"]  # fmt: skip
    base, unl = rows[0], rows[1]
    assert rows[2]["forget"] == base["forget"]  # hook removal = the base model, shown honestly
    for row in rows[2:-1]:
        _consistent(row, base, unl)
        assert row["cost"]["seconds"] >= 0
    relearn = [r for r in rows if r["attack"] == "relearn"]
    assert {r["setting"]["texts"] for r in relearn} == {"forget", "retain"}
    assert all(r["cost"]["steps"] == 2 and r["cost"]["tokens"] > 0 for r in relearn)
    probe = rows[-1]["probe"]["per_layer"]
    assert [p[0] for p in probe] == [1, 2] and all(0 <= p[1] <= 1 and 0 <= p[2] <= 1 for p in probe)


def test_weights_target_is_restored_and_has_no_hook_removal(setup):
    lm, suite, cfg = setup
    name = "model.layers.1.mlp.down_proj.weight"
    before = snapshot(lm.model)
    g = torch.Generator().manual_seed(0)
    target = weights_target({name: before[name] + torch.randn(before[name].shape, generator=g)}, HOOK)
    cfg.attacks = ["hook-removal", "direction"]
    run_dir = run_attack(cfg, lm=lm, suite=suite, unlearned=target)
    assert_identical(lm.model, before)
    rows = read_json(run_dir / "metrics.json")["rows"]
    assert [r["attack"] for r in rows] == ["base", "unlearned", "direction"]  # no hook to remove
    assert rows[2]["cost"]["tokens"] > 0  # the swapped weights changed activations at the hook
    for row in rows[2:]:
        _consistent(row, rows[0], rows[1])
