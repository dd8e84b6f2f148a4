"""Data parallelism under `accelerate launch` (2 CPU processes, gloo) equals one process; `--device-map`.

Each launched rank runs `dist_worker.compute`, the test runs it in its own process as the reference:
per-question frames equal exactly (each rank forwards the very batches one process forms), feature fire
counts exactly and activation sums to float rounding. Then `unlearn eval` launched on 2 processes writes
one run folder equal to a 1-process run's. Ranks and reference use one thread each: torch's CPU kernels
round differently with the thread count (cloze log-likelihoods move by ~5e-7 between 1 and 2 threads in
one process), which is no property of the sharding.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from unlearn.cli import app
from unlearn.results import read_json

sys.path.insert(0, str(Path(__file__).parent))
import dist_worker  # noqa: E402

WORDS = ("heart liver kidney lung cell nucleus DNA ATP virus enzymes proteins genes history geography "
         "photosynthesis mitochondria water salt blood body organ the of and a").split()  # fmt: skip


def rows(n: int, seed: int, subject: str) -> list[dict]:
    """Questions of varied length (so batches differ in padding), deterministic."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda k: " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (k,), generator=g))  # noqa: E731
    return [{"question": f"Which {pick(1 + (i * 7) % 11)}?", "choices": [f"{pick((i + c) % 3)} {WORDS[c]}".strip() for c in range(4)],
             "answer": int(torch.randint(4, (1,), generator=g)), "subject": subject} for i in range(n)]  # fmt: skip


@pytest.fixture
def files(tmp_path, tiny_folder):
    from test_select import random_sae

    paths = {}
    for role, seed, subject in (("forget", 1, "biology"), ("retain", 2, "history")):
        paths[role] = tmp_path / f"{role}.jsonl"
        paths[role].write_text("".join(json.dumps(r) + "\n" for r in rows(6, seed, subject)))
    sae_dir = random_sae(hook=dist_worker.HOOK).save(tmp_path / "sae")
    return str(tiny_folder("gemma2")), str(paths["forget"]), str(paths["retain"]), str(sae_dir)


@contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def launch(args: list[str], env: dict, *, module: bool = False) -> subprocess.CompletedProcess:
    """`accelerate launch` on 2 local processes (torchrun underneath; gloo, since no GPU is used)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), *(["-m"] if module else []), *args]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **env}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def test_two_ranks_score_and_count_as_one_process(files, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache-1"))
    with one_thread():
        want = dist_worker.compute(*files)
    out = tmp_path / "ranks"
    out.mkdir()
    launch([str(Path(dist_worker.__file__)), str(out), *files], {"UNLEARN_CACHE": str(tmp_path / "cache-2")})
    got = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [g["rank"] for g in got] == [0, 1] and {g["world"] for g in got} == {2}
    assert want["n_chunks"] > 4 * 2, "the test needs several batches per rank"
    for name in ("letter", "cloze"):  # the batches were split, not all run twice
        shares = [g[f"{name}_forwards"] for g in got]
        assert sum(shares) == want[f"{name}_forwards"] and 0 < min(shares) and max(shares) < sum(shares)
    for g in got:  # every rank holds the full result
        for key in ("letter_frame", "cloze_frame", "point_0", "point_1"):
            pd.testing.assert_frame_equal(g[key], want[key], check_exact=True)
        assert g["known"] == want["known"]
        assert g["edit_0"] == want["edit_0"] == g["edit_1"]  # the hook saw every batch on every rank
        assert want["edit_0"]["edited_frac"] > 0
        assert g["cache_hits"] > 0 and want["cache_hits"] > 0
        assert g["n_tokens"] == want["n_tokens"]
        assert torch.equal(g["fire_count"], want["fire_count"])  # integer counts: exact
        torch.testing.assert_close(g["act_sum"], want["act_sum"], rtol=1e-12, atol=1e-12)
        assert torch.equal(g["summed"], want["summed"])  # per-chunk rows: copied, exact


def test_eval_launched_on_two_processes_equals_one_process(files, tmp_path, monkeypatch):
    model, forget, retain, _ = files
    args = ["eval", "--model", model, "--tasks", f"{forget},{retain}", "--protocol", "letter", "--permutations",
            "--known-only", "--no-chat-template", "--batch-size", "7", "--run-id", "r"]  # fmt: skip
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache-1"))
    with one_thread():
        one = CliRunner().invoke(app, [*args, "--results", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    two = launch(["unlearn.cli", *args, "--results", str(tmp_path / "two")],
                 {"UNLEARN_CACHE": str(tmp_path / "cache-2")}, module=True)  # fmt: skip
    assert two.stdout.count("pooled forget") == 1  # rank 0 alone prints the table
    assert [p.name for p in (tmp_path / "two" / "eval").iterdir()] == ["r"]
    a, b = (tmp_path / "one" / "eval" / "r", tmp_path / "two" / "eval" / "r")
    pd.testing.assert_frame_equal(pd.read_csv(a / "questions.csv"), pd.read_csv(b / "questions.csv"),
                                  check_exact=True)  # fmt: skip
    assert read_json(a / "metrics.json") == read_json(b / "metrics.json")
    assert (b / "complete.json").exists()


def test_device_map_auto_loads_and_scores_as_a_plain_load(files, tiny, monkeypatch, tmp_path):
    """`--device-map auto` (accelerate places the modules; on a CPU-only machine all on the CPU): the same
    weights, and the same cloze frames unhooked and under a clamp as `--device cpu`."""
    from transformers import AutoModelForCausalLM

    from unlearn.clamp.intervene import feature_edit
    from unlearn.errors import UnlearnError
    from unlearn.eval.suite import EvalConfig, load_tasks, score_questions
    from unlearn.hooks import hook_device
    from unlearn.models import load_model
    from unlearn.sae.loaders import load_sae
    from unlearn.setup import resolve_setup

    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache"))
    model, forget, retain, sae_dir = files
    plain = tiny("gemma2")
    asked = []
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **kw: asked.append(kw.get("device_map")) or real(*a, **kw))  # fmt: skip
    mapped = load_model(resolve_setup(model=model, device_map="auto"), dtype="float32")
    assert asked == ["auto"]  # placed by transformers/accelerate, not moved by us
    assert hook_device(mapped.model, dist_worker.HOOK) == torch.device("cpu")
    a, b = dict(plain.model.named_parameters()), dict(mapped.model.named_parameters())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sae = load_sae(sae_dir, device="cpu", dtype=torch.float32)
    cfg = EvalConfig(forget=[forget], retain=[retain], protocol="cloze", batch_size=4, mutual_info=False)
    questions = [q for t in load_tasks(cfg) for q in t.questions]
    unhooked = None
    for edit in (False, True):
        frames = []
        for lm in (plain, mapped):
            hook = feature_edit(
                lm.model, sae, dist_worker.FEATURES, "clamp", -8.0, hook_name=dist_worker.HOOK
            )
            with torch.inference_mode(), hook if edit else contextlib.nullcontext():
                frames.append(score_questions(lm.model, lm.tokenizer, questions, cfg, chat_template=False))
        pd.testing.assert_frame_equal(*frames, check_exact=True)
        assert unhooked is None or not frames[0]["ll_0"].equals(unhooked["ll_0"])  # the clamp acted
        unhooked = frames[0]
    with pytest.raises(UnlearnError, match="--device-map"):
        load_model(resolve_setup(model=model, device_map="auto", device="cpu"))
    assert "--device-map" in CliRunner().invoke(app, ["eval", "--help"]).output


@pytest.mark.slow
def test_select_and_intervene_launched_on_two_processes_equal_one_process(files, tmp_path, monkeypatch):
    """`select-features` then an `intervene` sweep (two sizes, both controls, the hook-layer cache), each
    launched on 2 processes: every file but the run's own timestamps and paths is byte-identical."""
    model, forget, retain, sae_dir = files
    select = ["select-features", "--model", model, "--sae", sae_dir, "--hook", dist_worker.HOOK,
              "--forget-source", f"bio=questions:{forget}", "--retain-source", f"questions:{retain}",
              "--n-features", "6", "--retain-threshold", "1.0", "--max-length", "16", "--batch-tokens", "64",
              "--auroc-forget", forget, "--auroc-retain", retain, "--run-id", "s"]  # fmt: skip
    sweep = ["intervene", "--model", model, "--forget-tasks", forget, "--retain-tasks", retain, "--protocol",
             "cloze", "--n-features", "3,6", "--scale", "-5", "--all-questions", "--run-id", "i"]  # fmt: skip
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache-1"))
    for args in (select, sweep):
        features = ["--features", str(tmp_path / "one" / "select-features" / "s")] if args is sweep else []
        with one_thread():
            res = CliRunner().invoke(app, [*args, *features, "--results", str(tmp_path / "one")])
        assert res.exit_code == 0, res.output
        features = ["--features", str(tmp_path / "two" / "select-features" / "s")] if args is sweep else []
        launch(["unlearn.cli", *args, *features, "--results", str(tmp_path / "two")],
               {"UNLEARN_CACHE": str(tmp_path / "cache-2")}, module=True)  # fmt: skip
    own = {"complete.json", "run.json", "config.json", "hook_cache.json", "RUNNING"}
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert one == two and any(p.parts[-2] == "points" for p in one)
    for rel in one:
        if rel.name not in own:
            assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel
