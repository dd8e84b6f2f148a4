"""Sweep fan-out (`intervene --shard I/N`, `--shards N --launcher submitit`): the partition is disjoint and
covering; shards run one after another into one folder give the unsharded run's files byte for byte and
the same `report` rows; a missing, failed or lost shard makes the run incomplete; a shard with other
settings, or a bad --shard, is an error before any work."""

from __future__ import annotations

import dataclasses
import json
import os

import pandas as pd
import pytest
import torch
from test_intervene import HOOK, FakeSuite, _fires_on_token, intervene_cli, random_sae, write_question_sets

from unlearn.clamp.intervene import InterveneConfig, grid, run_intervene, with_gates
from unlearn.clamp.shard import Shard, parse_shard, shard_points, shard_state
from unlearn.errors import UnlearnError
from unlearn.report.collect import collect


def test_partition_is_disjoint_covers_every_point_and_balances():
    points = with_gates(grid(["clamp", "zero", "scale"], [1, 5, 20], [-5.0, -20.0, 0.5]),
                        ["none", "window", "dsg"], ["random-features", "random-direction"])  # fmt: skip
    ids = [p[0] for p in points]
    assert len(set(ids)) == len(ids) > 50
    for n in (1, 2, 3, 4, 7, len(ids), len(ids) + 3):
        shares = [shard_points(points, Shard(i, n)) for i in range(1, n + 1)]
        owner: dict[str, list[int]] = {}
        for i, share in enumerate(shares, 1):
            for p in share:
                owner.setdefault(p[0], []).append(i)
        assert sorted(owner) == sorted(ids) and all(len(v) == 1 for v in owner.values())  # each point once
        for share in shares:  # each share keeps the sweep's order
            assert [ids.index(p[0]) for p in share] == sorted(ids.index(p[0]) for p in share)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert shard_points(points, None) == points


@pytest.mark.parametrize("bad", ["0/2", "3/2", "1/0", "-1/2", "a/b", "2", "1/2/3", "", "1.5/2"])
def test_bad_shard_is_an_error_before_any_work(bad, tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    with pytest.raises(UnlearnError, match="--shard .* I/N"):
        parse_shard(bad)
    # through the sweep: refused before the model loads or any folder is made
    cfg = InterveneConfig(shard=bad, run_id="r", model=str(tiny_folder("gemma3")), feature_ids=[1])
    with pytest.raises(UnlearnError, match="--shard"):
        run_intervene(cfg)
    assert not (tmp_path / "intervene").exists()
    assert parse_shard(" 2 / 3 ") == Shard(2, 3) and str(parse_shard("1/1")) == "1/1"


def test_shard_flag_rules(tiny_folder, tmp_path, monkeypatch):
    """Each refused before the model loads (the tiny model would load in well under a second)."""
    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    base = {"model": str(tiny_folder("gemma3")), "feature_ids": [1]}
    with pytest.raises(UnlearnError, match="needs --run-id"):
        run_intervene(InterveneConfig(shard="1/2", **base))
    with pytest.raises(UnlearnError, match="--overwrite .* other shards"):
        run_intervene(InterveneConfig(shard="1/2", run_id="r", overwrite=True, **base))
    with pytest.raises(UnlearnError, match="go together"):
        run_intervene(InterveneConfig(shards=2, run_id="r", **base))
    with pytest.raises(UnlearnError, match="--launcher must be"):
        run_intervene(InterveneConfig(shards=2, launcher="ray", run_id="r", **base))
    with pytest.raises(UnlearnError, match="pass one of them"):
        run_intervene(InterveneConfig(shards=2, shard="1/2", launcher="submitit", run_id="r", **base))
    with pytest.raises(UnlearnError, match="--shards must be"):
        run_intervene(InterveneConfig(shards=0, launcher="submitit", run_id="r", **base))
    assert not (tmp_path / "intervene").exists()


def _files(run_dir, sub: str, suffix: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / sub).glob(f"*{suffix}"))}


def _sweep_setup(tiny, tmp_path):
    """A sweep with static, zero, gated and control points on the real evaluator (cloze, 6 questions)."""
    lm = tiny("gemma3")
    sae, _ = _fires_on_token(lm, HOOK, " heart")
    with torch.no_grad():
        sae.b_enc[5] *= 0.5
    heart = " heart" * 3
    rows = {"forget": [{"question": f"Which organ {i} beats{heart if i % 2 else ''}?",
                        "choices": ["heart", "lung", "eye", "ear"], "answer": i % 4} for i in range(3)],
            "retain": [{"question": f"Which city {i} is a capital{' heart' if i == 0 else ''}?",
                        "choices": ["Paris", "Lyon", "Nice", "Metz"], "answer": i % 4} for i in range(3)]}  # fmt: skip
    paths = write_question_sets(tmp_path, rows)
    cfg = InterveneConfig(
        feature_ids=[5, 1, 2], modes=["clamp", "zero"], n_features=[3], scales=[-50.0],
        clamp_unit="absolute", controls=["random-direction"], gates=["none", "window"], gate_fpr=0.0,
        protocol="cloze", forget_tasks=[str(paths["forget"])], retain_tasks=[str(paths["retain"])],
        known_only=False, split="all", batch_size=4,
    )  # fmt: skip
    return lm, sae, cfg


def test_two_shards_in_one_folder_equal_one_unsharded_run(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    lm, sae, cfg = _sweep_setup(tiny, tmp_path)
    whole = run_intervene(dataclasses.replace(cfg, run_id="whole"), lm=lm, sae=sae)
    one = dataclasses.replace(cfg, run_id="split", shard="1/2")
    split = run_intervene(one, lm=lm, sae=sae)
    points = sorted(p.name for p in (whole / "points").glob("*.json"))
    # static, its control, zero, gated, its control: shard 1/2 takes points 0, 2, 4 and shard 2/2 points 1, 3,
    # so a gated point and its control are calibrated in different shards
    assert points == sorted(["clamp_n3_s-50.json", "clamp_n3_s-50_ctrl-direction.json", "zero_n3.json",
                             "clamp_n3_s-50_gate-window.json", "clamp_n3_s-50_gate-window_ctrl-direction.json"])  # fmt: skip
    got_1 = sorted(p.stem for p in (split / "points").glob("*.json"))
    assert got_1 == ["clamp_n3_s-50", "clamp_n3_s-50_gate-window_ctrl-direction", "zero_n3"]
    assert not (split / "complete.json").exists()
    # one shard alone is not a result: report skips the run and names the missing shard
    c = collect(tmp_path / "results")
    assert set(c.points["run"]) == {"intervene/whole"}
    assert any("incomplete sharded run" in n and "shard 2/2 never started" in n for n in c.notes), c.notes
    with pytest.raises(UnlearnError, match="already ran.*--resume"):
        run_intervene(one, lm=lm, sae=sae)
    run_intervene(dataclasses.replace(cfg, run_id="split", shard="2/2"), lm=lm, sae=sae)
    assert (split / "complete.json").exists() and shard_state(split).complete
    # the points edit the model (else equal files would prove little): the static clamp moves the
    # log-likelihoods, the gate fires on forget questions and on no retain question
    ll = [f"ll_{k}" for k in range(4)]
    base_q = pd.read_csv(whole / "questions" / "baseline.csv")
    assert (pd.read_csv(whole / "questions" / "clamp_n3_s-50.csv")[ll] != base_q[ll]).any().any()
    rates = json.loads((whole / "points" / "clamp_n3_s-50_gate-window.json").read_text())["gate"][
        "measured_fpr"
    ]
    assert rates["forget_all"] > 0 and rates["retain_all"] == 0
    # every file a point leaves, byte for byte (JSON: the same scores, gates, edit sizes; CSV: per question)
    assert _files(split, "points", ".json") == _files(whole, "points", ".json")
    assert _files(split, "questions", ".csv") == _files(whole, "questions", ".csv")
    assert (split / "baseline.json").read_bytes() == (whole / "baseline.json").read_bytes()
    assert (split / "summary.csv").read_bytes() == (whole / "summary.csv").read_bytes()
    shards = [json.loads((split / "shards" / f"{i}-of-2.json").read_text()) for i in (1, 2)]
    assert [s["status"] for s in shards] == ["finished", "finished"]
    assert sorted(shards[0]["points"] + shards[1]["points"]) == sorted(p[: -len(".json")] for p in points)
    assert json.loads((split / "config.json").read_text())["shards"] == 2
    # report: both runs read, the same rows
    rows = collect(tmp_path / "results").points
    keep = [c for c in rows.columns if c not in ("run", "point", "row_id", "ref", "questions_file")]
    by_run = {r: g.set_index("point")[keep].sort_index() for r, g in rows.groupby("run")}
    pd.testing.assert_frame_equal(by_run["intervene/split"], by_run["intervene/whole"])
    assert len(by_run["intervene/split"]) == 6  # baseline + 5 points, exactly one baseline


def test_a_shard_with_other_settings_is_refused(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    lm = tiny("gemma3")
    sae, _ = _fires_on_token(lm, HOOK, " heart")
    cfg = InterveneConfig(feature_ids=[5, 1, 2], n_features=[1, 3], scales=[-20.0, -5.0], controls=[],
                          run_id="s", shard="1/2")  # fmt: skip
    run_dir = run_intervene(cfg, lm=lm, sae=sae, suite=FakeSuite(lm))
    before = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    # settings known from the flags: refused before any work
    for change, key in [({"scales": [-20.0]}, "grid"), ({"shard": "2/3"}, "shards"), ({"seed": 1}, "seed")]:
        with pytest.raises(UnlearnError, match=f"another sweep \\({key}"):
            run_intervene(
                dataclasses.replace(cfg, **{"shard": "2/2", **change}), lm=lm, sae=sae, suite=FakeSuite(lm)
            )
    # settings known once the model and SAE are there (here: the SAE's weights): refused at the folder
    other = random_sae(64, 32, "standard", dtype=torch.float32, hook_name=HOOK, seed=1)
    with pytest.raises(UnlearnError, match="another sweep \\(sae_weights"):
        run_intervene(dataclasses.replace(cfg, shard="2/2"), lm=lm, sae=other, suite=FakeSuite(lm))
    assert {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    assert not (run_dir / "shards" / "2-of-2.json").exists()
    # an unsharded run cannot join or resume a sharded folder, nor a shard an unsharded one
    with pytest.raises(UnlearnError, match="is sharded"):
        run_intervene(dataclasses.replace(cfg, shard=None, resume=True), lm=lm, sae=sae, suite=FakeSuite(lm))
    run_intervene(dataclasses.replace(cfg, shard=None, run_id="plain"), lm=lm, sae=sae, suite=FakeSuite(lm))
    with pytest.raises(UnlearnError, match="another sweep \\(shards"):
        run_intervene(dataclasses.replace(cfg, run_id="plain"), lm=lm, sae=sae, suite=FakeSuite(lm))


class FailingSuite(FakeSuite):
    def run(self, model, *, desc=None, on_task=None):
        if desc == self.fail_at:
            raise RuntimeError(f"boom at {desc}")
        return super().run(model, desc=desc, on_task=on_task)


def test_a_failed_or_lost_shard_marks_the_run_incomplete_until_rerun(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    lm = tiny("gemma3")
    sae, _ = _fires_on_token(lm, HOOK, " heart")
    cfg = InterveneConfig(feature_ids=[5, 1, 2], modes=["clamp", "zero"], n_features=[1, 3], scales=[-20.0],
                          controls=[], run_id="f")  # fmt: skip
    run_intervene(dataclasses.replace(cfg, shard="1/2"), lm=lm, sae=sae, suite=FakeSuite(lm))
    failing = FailingSuite(lm)
    failing.fail_at = "zero_n3"  # shard 2/2 holds points 1 and 3: clamp_n3_s-20, zero_n3
    with pytest.raises(RuntimeError, match="boom"):
        run_intervene(dataclasses.replace(cfg, shard="2/2"), lm=lm, sae=sae, suite=failing)
    run_dir = tmp_path / "intervene" / "f"
    assert (run_dir / "points" / "clamp_n3_s-20.json").exists()  # finished points stay
    assert not (run_dir / "points" / "zero_n3.json").exists() and not (run_dir / "complete.json").exists()
    status = json.loads((run_dir / "shards" / "2-of-2.json").read_text())
    assert status["status"] == "failed" and "boom at zero_n3" in status["error"]
    with pytest.raises(UnlearnError, match="nothing to report") as e:  # the only run is not a result
        collect(tmp_path)
    assert "shard 2/2 failed (RuntimeError: boom at zero_n3)" in str(e.value) and "--resume" in str(e.value)

    rerun = FakeSuite(lm)
    run_intervene(dataclasses.replace(cfg, shard="2/2", resume=True), lm=lm, sae=sae, suite=rerun)
    assert rerun.calls == ["baseline", "zero_n3"]  # only the missing point
    assert shard_state(run_dir).complete and (run_dir / "complete.json").exists()
    assert list(pd.read_csv(run_dir / "summary.csv")["point"]) == [
        "baseline", "clamp_n1_s-20", "clamp_n3_s-20", "zero_n1", "zero_n3"]  # fmt: skip
    # a point of a finished shard that went missing: incomplete again, and named
    (run_dir / "points" / "zero_n1.json").unlink()
    with pytest.raises(UnlearnError, match="shard 1/2 finished but points/zero_n1.json is missing"):
        collect(tmp_path)
    # a shard killed outright (status still `started`)
    status = json.loads((run_dir / "shards" / "1-of-2.json").read_text())
    (run_dir / "shards" / "1-of-2.json").write_text(json.dumps({**status, "status": "started"}))
    assert "has not finished" in shard_state(run_dir).describe()


def test_submitit_launcher_merges_shards_into_the_unsharded_run(tiny_folder, tmp_path, monkeypatch):
    """`--shards 2 --launcher submitit --submitit-cluster local` through the CLI: two local processes, one
    run folder whose points equal an unsharded run's, and the merged summary printed."""
    pytest.importorskip("submitit")
    from typer.testing import CliRunner

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache"))
    app, args = intervene_cli(
        tiny_folder, tmp_path, "--feature-ids", "1,2,3", "--n-features", "1,3", "--mode", "clamp",
        "--scale", "-50", "--limit", "2", "--controls", "none",
    )  # fmt: skip
    whole = CliRunner().invoke(app, [*args, "--run-id", "whole"])
    assert whole.exit_code == 0, whole.output
    launched = CliRunner().invoke(app, [*args, "--run-id", "fan", "--shards", "2", "--launcher", "submitit",
                                        "--submitit-cluster", "local", "--slurm-time", "10"])  # fmt: skip
    assert launched.exit_code == 0, (launched.output, launched.exception)
    res = tmp_path / "results" / "intervene"
    assert "submitted 2 local jobs" in launched.output and "intervene sweep" in launched.output
    assert "clamp_n1_s-50" in launched.output and "clamp_n3_s-50" in launched.output  # the merged summary
    points = _files(res / "whole", "points", ".json")
    assert len(points) == 2 and _files(res / "fan", "points", ".json") == points
    assert (res / "fan" / "summary.csv").read_bytes() == (res / "whole" / "summary.csv").read_bytes()
    assert shard_state(res / "fan").complete
    logs = list((tmp_path / "results" / ".submitit" / "intervene" / "fan").glob("*_log.out"))
    assert len(logs) == 2  # two jobs really ran, one point each, in two processes
    shards = [json.loads((res / "fan" / "shards" / f"{i}-of-2.json").read_text()) for i in (1, 2)]
    assert [s["points"] for s in shards] == [["clamp_n1_s-50"], ["clamp_n3_s-50"]]
    assert shards[0]["pid"] != shards[1]["pid"] != os.getpid()
