"""Fault injection: nothing false is ever reported as a result.

Each test damages one input (NaN weights, NaN flags, a diverging optimiser, concurrent or killed runs,
odd counts, broken question files, an unwritable folder) and checks the run stops with a clear
`UnlearnError` before any model loads where it can, and that no folder that looks like a good result is
left behind. Expected values come from a second code path (plain numpy / json / os) where one is needed.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from unlearn.checks import NonFiniteError, check_model_path, require_finite, writable_dir
from unlearn.errors import UnlearnError
from unlearn.results import (
    COMPLETE_FILE,
    FAILED_FILE,
    RUNNING_FILE,
    completed_runs,
    find_resumable,
    is_complete,
    latest_run_dir,
    open_run,
    read_json,
    write_json,
)
from unlearn.sae.model import SAE

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(autouse=True)
def results_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "results"
    monkeypatch.setenv("UNLEARN_RESULTS", str(root))
    return root


@pytest.fixture()
def no_model(monkeypatch):
    """Any model load fails the test: flag errors must come before it."""

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the flags were checked")

    for mod in (
        "unlearn.clamp.intervene",
        "unlearn.rmu.run",
        "unlearn.clamp.select",
        "unlearn.sae.train",
        "unlearn.models",
    ):
        monkeypatch.setattr(f"{mod}.load_model", boom)


def random_sae(d_in=64, d_sae=32, seed=0) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(d_in, d_sae, "jumprelu", hook_name=HOOK)
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            p.normal_()
        sae.threshold.fill_(0.1)
    return sae


# ---------------------------------------------------------------- finite or fail


def test_sae_with_nan_weights_is_refused_at_load_and_before_save(tmp_path):
    from unlearn.sae.loaders import load_sae

    good = random_sae().save(tmp_path / "good")
    weights = load_file(good / "sae_weights.safetensors")
    weights["W_dec"][3, 5] = float("nan")
    save_file(weights, good / "sae_weights.safetensors")  # damaged on disk, behind our back
    with pytest.raises(NonFiniteError, match=r"W_dec in .*sae_weights.safetensors is not finite \(1 of 2048"):
        load_sae(good)

    bad = random_sae()
    with torch.no_grad():
        bad.b_enc[0] = float("inf")
    with pytest.raises(NonFiniteError, match="b_enc in the SAE to be saved"):
        bad.save(tmp_path / "diverged")
    assert not (tmp_path / "diverged").exists() or not any((tmp_path / "diverged").iterdir())


def test_sae_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    from unlearn import results
    from unlearn.sae.loaders import load_sae

    folder = random_sae(seed=1).save(tmp_path / "sae")
    real = results._atomic_write

    def crash_mid_weights(path, write):
        def half(f):
            f.write(b"\0" * 10)
            raise KeyboardInterrupt

        real(path, half if path.suffix == ".safetensors" else write)

    monkeypatch.setattr(results, "_atomic_write", crash_mid_weights)
    with pytest.raises(KeyboardInterrupt):
        random_sae(seed=2).save(folder)
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]  # no temp file
    torch.testing.assert_close(load_sae(folder).W_dec, random_sae(seed=1).W_dec)  # the old SAE, intact


def test_cfg_d_in_contradicting_the_weights_is_an_error(tmp_path):
    from unlearn.sae.loaders import load_sae

    folder = random_sae().save(tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["d_in"] = 2304
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(UnlearnError, match=r"cfg.json: d_in=2304 contradicts the weights .*d_in 64"):
        load_sae(folder)


def test_nan_scores_never_become_an_accuracy(tiny):
    from unlearn.data import Question
    from unlearn.eval.scoring import score_cloze, score_letter

    qs = [Question("What pumps blood?", ["heart", "lung", "skin", "bone"], 0, None, "t", 0)]
    lm = tiny("gemma3")
    nan_scorer = lambda prompts: torch.full((len(prompts), 4), float("nan"))  # noqa: E731
    with pytest.raises(NonFiniteError, match="letter logits"):
        score_letter(qs, lm.tokenizer, nan_scorer, chat_template=False)
    model = copy.deepcopy(lm.model)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="answer log-likelihoods"):
        score_cloze(qs, model, lm.tokenizer)
    # the same question on the intact model is finite (the check does not fire on good numbers)
    assert np.isfinite(score_cloze(qs, lm.model, lm.tokenizer)["ll"]).all()


def test_nan_scale_is_refused_at_parse_time_and_before_the_model(no_model):
    from unlearn.clamp.intervene import InterveneConfig, run_intervene
    from unlearn.options import parse_list

    with pytest.raises(UnlearnError, match="finite"):
        parse_list("-20,nan", float)
    with pytest.raises(UnlearnError, match="--scale must be a finite number"):
        run_intervene(InterveneConfig(feature_ids=[1, 2], scales=[float("inf")]))
    proc = subprocess.run(
        [sys.executable, "-c", "from unlearn.cli import main; main()", "intervene", "--scale", "nan", "--feature-ids", "1"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    assert proc.returncode == 2 and "finite" in proc.stderr and "Traceback" not in proc.stderr


def test_diverging_rmu_update_is_caught_after_the_step_and_never_saved(tiny, tmp_path):
    from unlearn.rmu.train import RMUTrainer, steering_vectors, tokenize
    from unlearn.rmu.weights import save_rmu_weights

    lm = tiny("gemma2")
    batch = tokenize(lm.tokenizer, ["the heart pumps blood", "cells divide"], 16, lm.model.device)

    def trainer(lr):
        model = copy.deepcopy(lm.model)
        return RMUTrainer(model, layer=2, update_layers=[0, 1, 2], alpha=1.0, lr=lr,
                          control_vecs=steering_vectors(model.config.hidden_size, 20.0, 1, seed=0))  # fmt: skip

    with pytest.raises(UnlearnError, match="RMU update at step 0 overflowed .*lower --lr"):
        trainer(1e39).step(batch, batch)  # AdamW's own overflow: a message, not a traceback

    t = trainer(1e-3)
    real_step = t.optimizer.step

    def overflowing_step():  # an update that overflows the weights; the loss before it was finite
        real_step()
        with torch.no_grad():
            next(iter(t.params.values()))[0, 0] = float("inf")

    t.optimizer.step = overflowing_step
    with pytest.raises(NonFiniteError, match=r"the RMU weights after step 0 .*lower --lr"):
        t.step(batch, batch)
    weights = t.changed_weights()
    assert not all(torch.isfinite(w).all() for w in weights.values())  # independent: torch says so too
    with pytest.raises(NonFiniteError, match="RMU weights to be saved"):
        save_rmu_weights(tmp_path / "weights.safetensors", weights, {})
    assert not (tmp_path / "weights.safetensors").exists()


def test_diverging_train_sae_saves_nothing(tmp_path):
    from unlearn.sae.training import SAETrainConfig, train_sae

    torch.manual_seed(0)
    acts_ND = torch.randn(512, 16) * 10
    result = train_sae(acts_ND, SAETrainConfig(width=32, batch_size=64, epochs=1.0, lr=1e30), progress=False)
    params = [p for p in result.sae.parameters()]
    if all(torch.isfinite(p).all() for p in params):
        pytest.skip("this lr did not diverge on this torch build")  # pragma: no cover
    with pytest.raises(NonFiniteError, match="not saved; lower the learning rate"):
        # to_sae re-parametrises to unit-norm decoder rows, which first checks the weights are finite
        result.sae.to_sae(result.scale, hook_name=HOOK, dtype=torch.float16).save(tmp_path / "sae")
    assert not (tmp_path / "sae" / "cfg.json").exists()


def test_json_never_holds_nan(tmp_path):
    with pytest.raises(UnlearnError, match="NaN or infinite"):
        write_json(tmp_path / "m.json", {"acc": float("nan")})
    assert not (tmp_path / "m.json").exists()
    require_finite(0.5, "x")  # finite passes


# ---------------------------------------------------------------- runs are atomic units


def test_runs_started_together_get_distinct_folders(results_root):
    made: list[Path] = []

    def start():
        with open_run("eval", {"command": "eval"}) as run:
            made.append(run.path)

    threads = [threading.Thread(target=start) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({p.name for p in made}) == 16  # same second, 16 folders
    assert len(completed_runs("eval")) == 16


def test_lifecycle_markers_and_failure(results_root):
    with open_run("eval", {"command": "eval", "x": 1}, run_id="r1") as run:
        assert (run.path / RUNNING_FILE).exists() and not (run.path / COMPLETE_FILE).exists()
        run.write_json("metrics.json", {"acc": 0.5})
    assert is_complete(run.path) and not (run.path / RUNNING_FILE).exists()
    finished = read_json(run.path / COMPLETE_FILE)
    assert finished["finished"] >= finished["started"]

    with pytest.raises(KeyboardInterrupt), open_run("eval", {"command": "eval"}, run_id="r2") as run2:
        raise KeyboardInterrupt  # Ctrl-C
    assert (run2.path / FAILED_FILE).read_text().startswith("KeyboardInterrupt")
    assert not is_complete(run2.path) and not (run2.path / RUNNING_FILE).exists()
    assert completed_runs("eval") == [run.path]


def test_rerun_of_an_id_needs_resume_or_overwrite_and_a_killed_overwrite_leaves_no_old_numbers(results_root):
    with open_run("eval", {"command": "eval", "lr": 1}, run_id="r") as run:
        run.write_json("metrics.json", {"acc": 0.9})
    with pytest.raises(UnlearnError, match="already exists: pass --resume .*--overwrite"):
        with open_run("eval", {"command": "eval", "lr": 2}, run_id="r"):
            pass
    with pytest.raises(UnlearnError, match=r"other settings \(lr differ"):
        with open_run("eval", {"command": "eval", "lr": 2}, run_id="r", resume=True):
            pass
    assert read_json(run.path / "metrics.json") == {"acc": 0.9} and is_complete(run.path)  # untouched
    with (
        pytest.raises(RuntimeError),
        open_run("eval", {"command": "eval", "lr": 2}, run_id="r", overwrite=True) as r2,
    ):
        r2.write_json("weights.json", {})
        raise RuntimeError("killed mid-way")
    assert not (r2.path / "metrics.json").exists()  # the old numbers are gone, not shown under new settings
    assert (r2.path / FAILED_FILE).exists() and read_json(r2.path / "config.json")["lr"] == 2
    assert latest_run_dir("eval") is None


def test_sigkill_leaves_a_running_marker_that_no_reader_trusts(results_root, tmp_path):
    code = (
        "from unlearn.results import open_run\n"
        "import time\n"
        "with open_run('rmu-baseline', {'command': 'rmu-baseline'}, run_id='k') as run:\n"
        "    run.write_json('metrics.json', {'before': {}, 'after': {}})\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "UNLEARN_RESULTS": str(results_root)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    run = results_root / "rmu-baseline" / "k"
    assert (run / RUNNING_FILE).exists() and not is_complete(run)
    assert latest_run_dir("rmu-baseline") is None
    from unlearn.rmu.weights import completed_rmu_weights

    (run / "weights.safetensors").write_bytes(b"")
    with pytest.raises(UnlearnError, match="did not complete .*no completion record"):
        completed_rmu_weights(run)


def test_latest_is_the_newest_completed_run_not_the_alphabetically_last(results_root):
    with open_run("select-features", {"command": "select-features"}, run_id="zzz-named") as named:
        named.write_json("features.json", {})
    time.sleep(0.01)
    with open_run("select-features", {"command": "select-features"}) as stamped:  # 2026...-abc123 < "zzz"
        stamped.write_json("features.json", {})
    with pytest.raises(RuntimeError), open_run("select-features", {"command": "select-features"}) as failed:
        failed.write_json("features.json", {})
        raise RuntimeError
    assert stamped.path.name < named.path.name
    assert latest_run_dir("select-features", require="features.json") == stamped.path
    assert find_resumable("select-features", {"command": "select-features"}) == failed.path.name


@pytest.mark.parametrize("bad", ["../escape", "/tmp/abs", "a/b", "..", "", ".hidden"])
def test_run_ids_are_plain_names(results_root, tmp_path, bad):
    victim = tmp_path / "escape"
    victim.mkdir()
    (victim / "keep.txt").write_text("x")
    with pytest.raises(UnlearnError, match="not a plain name"):
        with open_run("eval", {}, run_id=bad, overwrite=True):
            pass
    assert (victim / "keep.txt").exists()


def test_report_reads_only_completed_runs_and_refuses_impossible_accuracies(results_root):
    from unlearn.report.collect import CorruptRun, collect, parse_block

    block = {"protocol": "cloze", "subset": "all", "scores": [
        {"task": "offline:bio", "role": "forget", "n": 10, "acc": 0.25},
        {"task": "offline:retain", "role": "retain", "n": 10, "acc": 0.75}]}  # fmt: skip
    with open_run("eval", {"command": "eval", "preset": None, "model": "m"}) as good:
        good.write_json("metrics.json", block)
    killed = results_root / "eval" / "killed"
    killed.mkdir(parents=True)
    write_json(killed / "config.json", {"command": "eval", "preset": None, "model": "m"})
    write_json(
        killed / "metrics.json", {**block, "scores": [{**block["scores"][0], "acc": 0.0}, block["scores"][1]]}
    )
    write_json(killed / RUNNING_FILE, {"started": "x"})
    c = collect(results_root)
    assert list(c.points["forget_acc"]) == [0.25]
    assert any("skipped unfinished run" in n and "killed" in n for n in c.notes)
    with pytest.raises(CorruptRun, match=r"outside \[0, 1\]"):
        parse_block({**block, "scores": [{**block["scores"][0], "acc": 1.5}]}, "x")


# ---------------------------------------------------------------- validate before work


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_features": [-5]}, "--n-features must be ≥ 1, got -5"),
        ({"n_features": [0]}, "--n-features must be ≥ 1, got 0"),
        ({"limit": -3}, "--limit must be ≥ 1, got -3"),
        ({"batch_size": 0}, "--batch-size must be ≥ 1"),
        ({"feature_ids": [3, -1]}, r"--feature-ids must be ≥ 0, got \[-1\]"),
        ({"feature_ids": [3, 3]}, "more than once"),
        ({"modes": ["clampp"]}, "Unknown intervention mode"),
        ({"run_id": "../x"}, "not a plain name"),
        ({"feature_ids": None, "features": "nowhere/features.json"}, "not found"),
        ({"model": "/no/such/model"}, "no such local file or folder"),
    ],
)
def test_intervene_flags_fail_before_the_model_loads(no_model, changes, message):
    from unlearn.clamp.intervene import InterveneConfig, run_intervene

    with pytest.raises(UnlearnError, match=message):
        run_intervene(InterveneConfig(**{"feature_ids": [1, 2], **changes}))


def test_other_commands_check_counts_before_the_model(no_model, tmp_path):
    from unlearn.clamp.select import SelectConfig, run_select
    from unlearn.eval.run import EvalRunConfig, run_eval
    from unlearn.rmu.run import RMUConfig, run_rmu
    from unlearn.sae.train import TrainSAEConfig, run_train_sae

    with pytest.raises(UnlearnError, match="--n-features must be ≥ 1, got 0"):
        run_select(SelectConfig(n_features=0))
    with pytest.raises(UnlearnError, match=r"--retain-threshold is a fraction"):
        run_select(SelectConfig(retain_threshold=2.0))
    with pytest.raises(UnlearnError, match="--limit must be ≥ 1, got -3"):
        run_eval(EvalRunConfig(limit=-3))
    with pytest.raises(UnlearnError, match="No RMU weights at 'nowhere'"):
        run_eval(EvalRunConfig(rmu="nowhere"))
    with pytest.raises(UnlearnError, match="--lr must be a finite number"):
        run_rmu(RMUConfig(lr=float("nan")))
    with pytest.raises(UnlearnError, match="--n-batches.* must be"):
        run_rmu(RMUConfig(n_batches=0))
    file = tmp_path / "a-file"
    file.write_text("")
    with pytest.raises(UnlearnError, match="--out .* is a file, not a folder"):
        run_train_sae(TrainSAEConfig(out=file / "sae"))


def test_unwritable_output_is_found_before_the_work(tmp_path):
    from unlearn.report.run import ReportConfig, run_report

    file = tmp_path / "f"
    file.write_text("")
    with pytest.raises(UnlearnError, match="is a file, not a folder"):
        writable_dir(file / "out", "--out")
    with pytest.raises(UnlearnError, match="--out"):
        run_report(ReportConfig(results=tmp_path, out=file / "report"))
    assert writable_dir(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"


def test_missing_local_model_path_is_named(tmp_path):
    with pytest.raises(UnlearnError, match="no such local file or folder"):
        check_model_path(str(tmp_path / "model.gguf"))
    check_model_path("google/gemma-2-2b-it")  # a hub id is left to the hub


def test_intervene_features_from_an_unfinished_selection_is_refused(results_root):
    from unlearn.clamp.select import read_selection

    sel = results_root / "select-features" / "s"
    write_json(sel / "config.json", {"command": "select-features"})
    write_json(sel / "features.json", {"topics": {"bio": {"features": [1]}}})
    write_json(sel / RUNNING_FILE, {"started": "x"})
    with pytest.raises(UnlearnError, match="not a completed select-features run"):
        read_selection(sel)
    with pytest.raises(UnlearnError, match="No feature selection found"):
        read_selection(None)


# ---------------------------------------------------------------- question files


def _jsonl(path: Path, rows: list[dict], bom: bool = False) -> str:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return str(path)


ROW = {"question": "What pumps blood?", "choices": ["heart", "lung", "skin", "bone"], "answer": 0}


def test_question_files_empty_bom_duplicates_and_choices(tmp_path):
    from unlearn.data import load_questions

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n")
    with pytest.raises(UnlearnError, match="empty.jsonl is empty"):
        load_questions(str(empty))
    bom = load_questions(_jsonl(tmp_path / "bom.jsonl", [ROW], bom=True))
    assert [q.question for q in bom] == [ROW["question"]]
    dup = _jsonl(tmp_path / "dup.jsonl", [ROW, {**ROW, "answer": 1}, ROW])
    with pytest.raises(UnlearnError, match=r"dup.jsonl: row 2 repeats row 1"):
        load_questions(dup)
    same = _jsonl(tmp_path / "same.jsonl", [ROW, {**ROW, "question": "Q2", "choices": ["a", "b", "a ", "c"]}])
    with pytest.raises(UnlearnError, match=r"same.jsonl: row 2 is invalid: it has identical choices"):
        load_questions(same)
    blank = _jsonl(tmp_path / "blank.jsonl", [{**ROW, "choices": ["a", " ", "b", "c"]}])
    with pytest.raises(UnlearnError, match=r"row 1 is invalid: it has an empty choice"):
        load_questions(blank)


def test_over_long_question_is_an_error_naming_file_and_row(tiny, tmp_path):
    from unlearn.eval.suite import EvalConfig, prepare_eval

    lm = tiny("gemma3")
    context = lm.model.config.max_position_embeddings
    long_q = {**ROW, "question": "blood " * (2 * context)}
    path = _jsonl(tmp_path / "long.jsonl", [ROW, long_q])
    for protocol in ("cloze", "letter"):
        cfg = EvalConfig(forget=[path], protocol=protocol, chat_template=False)
        with pytest.raises(
            UnlearnError, match=rf"long.jsonl: row 2: .* longer than the model's context of {context}"
        ):
            prepare_eval(lm, cfg)


def test_empty_known_subset_is_written_as_no_score_not_nan(tmp_path):
    from unlearn.results import EvalBlock, TaskScore

    block = EvalBlock.from_scores([TaskScore("a", "forget", "cloze", "known", 0, None),
                                   TaskScore("b", "forget", "cloze", "known", 4, 0.5)])  # fmt: skip
    assert block.forget_acc == 0.5
    write_json(tmp_path / "m.json", block)
    assert json.loads((tmp_path / "m.json").read_text())["scores"][0]["acc"] is None
    assert not math.isnan(block.forget_acc)
