"""Screening ranks a planted feature first; greedy never breaks its retain budget (checked against a
brute-force loop); the chosen set is a selection `intervene` reads and is tested beside its control."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pandas as pd
import pytest
import torch
from test_intervene import HOOK, random_sae

from unlearn.clamp.intervene import feature_edit
from unlearn.clamp.screen import (
    ScreenConfig,
    Trial,
    allowed_errors,
    greedy_select,
    retain_errors,
    run_screen,
    screening_order,
)
from unlearn.errors import UnlearnError
from unlearn.eval.suite import EvalOutcome, EvalTask, block_from_frame, task_score
from unlearn.hooks import forward_to
from unlearn.results import mark_complete, read_json, write_json

FORGET = [f"The heart {w}" for w in ("pumps blood.", "moves blood through the body.", "sends blood.",
                                    "drives the blood.", "has four chambers.", "beats.")]  # fmt: skip
RETAIN = ["History of the city of Rome.", "Computer science studies algorithms.", "The river flows to the sea.",
          "Geography of the valley.", "The map shows the city.", "Rome was a city."]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class LogitSuite:
    """A deterministic evaluator on tiny models: a 'question' is a text, answered right when the model's
    last-position logits equal the unhooked model's (to 1e-5). An edit that touches a text breaks it."""

    def __init__(self, lm, tasks: dict[str, tuple[str, list[str]]]):
        self.lm, self.tasks_in, self.calls = lm, tasks, []
        self.tasks = [EvalTask(name, role, []) for name, (role, _) in tasks.items()]
        self.ref = {name: self._last(lm.model, texts) for name, (_, texts) in tasks.items()}

    def _last(self, model, texts):
        out = []
        for t in texts:  # one text per forward: no padding, so nothing but the edit can move a logit
            ids = self.lm.tokenizer([t], return_tensors="pt")
            out.append(model(**ids).logits[0, -1].double())
        return torch.stack(out)

    def run(self, model, *, desc=None, on_task=None):
        self.calls.append(desc)
        frames, scores = [], []
        for name, (role, texts) in self.tasks_in.items():
            with torch.no_grad():
                same = (self._last(model, texts) - self.ref[name]).abs().amax(-1) < 1e-5
            frame = pd.DataFrame({"task": name, "role": role, "index": range(len(texts)),
                                  "subject": None, "answer": 0, "correct": same.numpy(), "known": True})  # fmt: skip
            frames.append(frame)
            scores.append(task_score(frame, EvalTask(name, role, []), "toy", "known"))
        table = pd.concat(frames, ignore_index=True)
        return EvalOutcome(block_from_frame(scores, table), table)


def planted_sae(lm, token: str = " heart", feature: int = 5, sae=None, texts=None):
    """A standard SAE whose `feature` fires exactly at the `token` positions of the test texts (its
    encoder column separates them from every other position, threshold half-way), 9 fires everywhere,
    and the rest never fire."""
    texts = texts or FORGET + RETAIN
    tok_id = lm.tokenizer(token, add_special_tokens=False)["input_ids"][0]
    xs, hits = [], []
    for t in texts:
        ids = lm.tokenizer([t], return_tensors="pt")
        xs.append(forward_to(lm.model, [HOOK], **ids)[HOOK][0])
        hits.append(ids["input_ids"][0] == tok_id)
    x_ND, hit_N = torch.cat(xs).double(), torch.cat(hits)
    assert 0 < hit_N.sum() < len(hit_N)
    u_D = x_ND[hit_N].mean(0) - x_ND[~hit_N].mean(0)
    u_D = u_D / u_D.norm()
    proj_N = x_ND @ u_D
    assert proj_N[hit_N].min() > proj_N[~hit_N].max(), "the token is not linearly separable here"
    if sae is None:
        sae = random_sae(64, 32, "standard", dtype=torch.float32, hook_name=HOOK)
        with torch.no_grad():
            sae.b_enc.fill_(-1e4)
            sae.b_enc[9] = 1e4  # active at every token
    with torch.no_grad():
        sae.W_enc[:, feature] = u_D.float()
        sae.b_enc[feature] = -float(proj_N[hit_N].min() + proj_N[~hit_N].max()) / 2
    return sae


def suite_of(lm):
    return LogitSuite(lm, {"forget-q": ("forget", FORGET), "retain-q": ("retain", RETAIN)})


def test_screening_ranks_the_planted_feature_first(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    lm = tiny("gemma3")
    sae = planted_sae(lm)
    suite = suite_of(lm)
    cfg = ScreenConfig(feature_ids=[11, 9, 5, 3], clamp_unit="absolute", scale=-20.0, run_id="s")
    run = run_screen(cfg, lm=lm, sae=sae, suite=suite)
    screen = read_json(run / "screen.json")
    assert screen["order"][0] == 5  # ranked third by the selection, first by its screened effect
    rows = {r["feature"]: r for r in screen["features"]}
    assert rows[5]["d_forget"] == -1.0 and rows[5]["d_retain"] == 0.0 and rows[5]["retain_errors"] == 0
    assert rows[9]["d_forget"] == -1.0 and rows[9]["retain_errors"] == len(RETAIN)  # breaks everything
    assert rows[11]["d_forget"] == 0.0 and rows[3]["d_forget"] == 0.0  # silent features change nothing
    assert screen["order"][:2] == [5, 9]
    lo, hi = rows[5]["d_forget_ci"]
    assert lo <= -1.0 <= hi and rows[5]["edit"]["edited_frac"] > 0
    assert suite.calls == ["unhooked"] + [f"feature {f} ({i}/4)" for i, f in enumerate([11, 9, 5, 3], 1)]
    csv = pd.read_csv(run / "screen.csv")
    assert list(csv["feature"])[:2] == [5, 9] and (run / "complete.json").exists()


def test_screening_order_rule():
    rows = [{"rank": 1, "feature": 10, "d_forget": -0.1, "d_retain": 0.0},
            {"rank": 2, "feature": 20, "d_forget": -0.3, "d_retain": -0.2},
            {"rank": 3, "feature": 30, "d_forget": -0.3, "d_retain": 0.0},
            {"rank": 4, "feature": 40, "d_forget": None, "d_retain": 0.0},
            {"rank": 5, "feature": 50, "d_forget": 0.0, "d_retain": 0.0}]  # fmt: skip
    assert screening_order(rows) == [30, 20, 10, 50, 40]


def test_allowed_errors_counts_and_fractions():
    assert allowed_errors(0, 50) == 0 and allowed_errors(2, 50) == 2.0
    assert allowed_errors(0.1, 50) == pytest.approx(5.0)
    for bad in (-1, 2.5, float("nan")):
        with pytest.raises(UnlearnError):
            allowed_errors(bad, 50)


def test_retain_errors_count_lost_known_answers():
    base = pd.DataFrame({"task": ["r"] * 4 + ["f"], "role": ["retain"] * 4 + ["forget"], "index": [0, 1, 2, 3, 0],
                         "correct": [1, 1, 0, 1, 1], "known": [True, True, False, True, True]})  # fmt: skip
    point = base.assign(correct=[0, 1, 1, 0, 0])
    assert retain_errors(point, base) == 2.0  # q0, q3 lost; q2 (unknown) gained, forget ignored
    perm = base.rename(columns={"correct": "frac_correct"}).assign(frac_correct=[1, 1, 0, 1, 1])
    assert retain_errors(perm.assign(frac_correct=[0.5, 1, 1, 0.75, 0]), perm) == pytest.approx(0.75)


def _brute_force(order, errors_of, allowed, max_features):
    """The rule written out plainly: walk the order, try the set with the feature, keep it if within."""
    kept = []
    for f in order:
        if len(kept) == max_features:
            break
        if errors_of(tuple(kept) + (f,)) <= allowed:
            kept = kept + [f]
    return kept


@pytest.mark.parametrize("seed", range(25))
def test_greedy_equals_a_brute_force_loop_and_never_breaks_the_budget(seed):
    rng = random.Random(seed)
    feats = list(range(12))
    cost = {f: rng.choice([0, 0, 0, 1, 2, 3]) for f in feats}
    pair = {p: rng.choice([-1, 0, 0, 1]) for p in itertools.combinations(feats, 2)}  # non-additive

    def errors_of(s):
        return max(
            0, sum(cost[f] for f in s) + sum(pair[tuple(sorted(p))] for p in itertools.combinations(s, 2))
        )

    calls = []

    def evaluate(s):
        calls.append(tuple(s))
        return Trial(0.5, 1.0, float(errors_of(tuple(s))))

    order = rng.sample(feats, len(feats))
    allowed, max_features = rng.choice([0, 1, 2, 4]), rng.choice([3, 5, 12])
    chosen, steps = greedy_select(order, evaluate, allowed, max_features)
    assert chosen == _brute_force(order, errors_of, allowed, max_features)
    assert len(chosen) <= max_features
    for i in range(1, len(chosen) + 1):  # every set greedy ever held keeps the budget
        kept_then = [s["feature"] for s in steps if s["accepted"]][:i]
        assert errors_of(tuple(kept_then)) <= allowed
    for s in steps:  # a rejected feature did break it, given what was kept before it
        assert s["accepted"] == (s["retain_errors"] <= allowed)
    assert all(c == tuple(c[:-1]) + (c[-1],) for c in calls)


def _selection(tmp_path, sae, feats, typical, controls, ctrl_typical, name="sel", topic="bio"):
    sel = tmp_path / "select-features" / name
    stats = [{"feature": f, "top_tokens": [" heart"], "contexts": [{"text": "the «heart»"}]} for f in feats]
    write_json(sel / "features.json", {
        "sae": str(sae.save(tmp_path / f"sae-{name}")), "hook": HOOK,
        "rule": {"retain_threshold": 0.01, "rank_by": "ratio"},
        "topics": {topic: {"features": feats, "typical_activation": typical, "stats": stats,
                           "controls": {"controls": controls, "control_typical_activation": ctrl_typical}}}})  # fmt: skip
    write_json(sel / "config.json", {"command": "select-features"})
    mark_complete(sel)
    return sel


def test_greedy_keeps_the_budget_on_dev_and_tests_the_set_beside_its_control(tiny, tmp_path, monkeypatch):
    from unlearn.clamp.intervene import InterveneConfig, run_intervene
    from unlearn.clamp.select import read_selection

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    lm = tiny("gemma3")
    sae = planted_sae(lm)
    sel = _selection(
        tmp_path, sae, [11, 9, 5, 3], [1.0, 2.0, 0.5, 1.5], [20, 21, 9, 22], [1.0, 1.0, 2.0, 1.0]
    )
    dev, test = suite_of(lm), suite_of(lm)
    cfg = ScreenConfig(features=str(sel), scale=-40.0, clamp_unit="typical", greedy=True, retain_budget=0,
                       run_id="g")  # fmt: skip
    run = run_screen(cfg, lm=lm, sae=sae, suite=dev, test_suite=test)
    assert len(dev.calls) == 1 + 4 + 3  # unhooked, 4 singles, 3 new sets (the first single is reused)
    greedy = read_json(run / "greedy.json")
    assert greedy["chosen"] == [5, 11, 3]  # 9 breaks every retain text: rejected
    assert [s["feature"] for s in greedy["steps"] if not s["accepted"]] == [9]
    # brute force on dev with the real clamp: every set greedy held keeps the budget, adding 9 breaks it
    typ = {11: 1.0, 9: 2.0, 5: 0.5, 3: 1.5}
    base = dev.run(lm.model)
    for k in range(1, 4):
        feats = greedy["chosen"][:k]
        with torch.no_grad(), feature_edit(lm.model, sae, feats, "clamp", torch.tensor([-40.0 * typ[f] for f in feats]),
                                    hook_name=HOOK):  # fmt: skip
            assert retain_errors(dev.run(lm.model).questions, base.questions) == 0
    with (
        torch.no_grad(),
        feature_edit(lm.model, sae, [5, 9], "clamp", torch.tensor([-20.0, -80.0]), hook_name=HOOK),
    ):
        assert retain_errors(dev.run(lm.model).questions, base.questions) > 0
    # the chosen set is a selection in select-features' format, with aligned typical values and controls
    chosen = read_selection(run)
    assert chosen.features == [5, 11, 3] and chosen.typical == [0.5, 1.0, 1.5]
    assert chosen.controls == [9, 20, 22] and chosen.control_typical == [2.0, 1.0, 1.0]
    point = read_json(run_intervene(InterveneConfig(features=str(run), n_features=[3], scales=[-40.0],
                                                    clamp_unit="typical", controls=[]),
                                    lm=lm, sae=sae, suite=suite_of(lm)) / "points" / "clamp_n3_s-40.json")  # fmt: skip
    assert point["features"] == [5, 11, 3] and point["clamp_values"] == [-20.0, -40.0, -60.0]
    # once on the test split: the greedy set, its matched random features, the top-n rule
    t = read_json(run / "test.json")
    assert set(t["points"]) == {"greedy", "greedy_ctrl-features", "top-3"}
    assert t["points"]["greedy_ctrl-features"]["features"] == [9, 20, 22]
    assert t["points"]["top-3"]["features"] == [11, 9, 5]
    assert t["points"]["greedy"]["d_forget"][0] == -1.0 and t["points"]["greedy"]["retain_errors"] == 0
    assert t["points"]["greedy_ctrl-features"]["retain_errors"] == len(RETAIN)  # its control holds feature 9
    assert t["points"]["greedy"]["vs_control"]["retain"][0] == 1.0
    assert test.calls[0] == "unhooked" and len(test.calls) == 4

    # the report: screening (dev) only when dev is shown, the greedy test table on test
    from unlearn.report.run import ReportConfig, run_report
    from unlearn.report.screen import collect_parts

    assert [p.title for p in collect_parts(tmp_path, "test")] == ["Greedy set: screen-features/g"]
    assert [p.title for p in collect_parts(tmp_path, "dev")] == ["Screening: screen-features/g"]
    out = run_report(
        ReportConfig(results=tmp_path, out=tmp_path / "rep", split="all", formats=("md", "html"))
    )
    md = (out / "report.md").read_text()
    assert "## Screening: screen-features/g" in md and "## Greedy set: screen-features/g" in md
    assert "greedy_ctrl-features" in md and (out / "screen_g.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert html.rstrip().endswith("</html>") and "Greedy set: screen-features/g" in html


def test_screen_command_with_the_real_evaluator(tiny_folder, tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from unlearn.clamp.screen import screen_features_command

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache"))
    sae = random_sae(64, 32, "standard", dtype=torch.float32)
    app = typer.Typer()
    app.command()(screen_features_command)
    args = ["--model", str(tiny_folder("gemma3")), "--sae", str(sae.save(tmp_path / "sae")), "--hook", HOOK,
            "--feature-ids", "1,2,3", "--scale", "-50", "--clamp-unit", "absolute", "--greedy", "--retain-budget",
            "0.5", "--no-controls", "--forget-tasks", "offline:bio", "--retain-tasks", "offline:retain",
            "--protocol", "cloze", "--all-questions", "--limit", "3", "--run-id", "cli"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "screen-features" / "cli"
    screen = read_json(run / "screen.json")
    assert sorted(screen["order"]) == [1, 2, 3] and screen["split"] == "dev"
    assert {s["split"] for s in screen["baseline"]["scores"]} == {"dev"}
    greedy = read_json(run / "greedy.json")
    assert all(s["retain_errors"] <= greedy["allowed_errors"] for s in greedy["steps"] if s["accepted"])
    if greedy["chosen"]:
        test = read_json(run / "test.json")
        assert {s["split"] for s in test["baseline"]["scores"]} == {"test"}
    assert "screening on dev" in result.output
    bad = CliRunner().invoke(app, [*args[:-2], "--run-id", "x", "--retain-budget", "2.5"])
    assert isinstance(bad.exception, UnlearnError)


def test_retain_errors_read_known_flags_written_as_text():
    # questions/*.csv read back: `known` holds the strings True/False, and "False" must not count
    base = pd.DataFrame({"task": "r", "role": "retain", "index": [0, 1], "correct": np.array([True, True]),
                         "known": ["True", "False"]})  # as read back from questions/*.csv  # fmt: skip
    assert retain_errors(base.assign(correct=np.array([False, False])), base) == 1.0
