"""`report_attacks.attack_tables` on a synthetic results tree written through `results.open_run`."""

from __future__ import annotations

import time

import pytest

from unlearn.report.attacks import attack_tables
from unlearn.results import open_run


def _ci(v, lo, hi):
    return {"value": v, "low": lo, "high": hi}


def _rows(forget_unlearned: float) -> list[dict]:
    cost = {"seconds": 12.4, "steps": 0, "tokens": 0, "examples": 0}
    return [
        {"attack": "base", "setting": {}, "cost": {"seconds": 3.0}, "forget": _ci(0.9, 0.8, 1.0),
         "retain": _ci(0.8, 0.7, 0.9), "forget_recovered": None, "retain_recovered": None},
        {"attack": "unlearned", "setting": {}, "cost": {"seconds": 3.0}, "forget": _ci(forget_unlearned, 0.2, 0.4),
         "retain": _ci(0.78, 0.7, 0.86), "forget_recovered": _ci(0.0, 0.0, 0.0), "retain_recovered": None},
        {"attack": "relearn", "setting": {"texts": "forget", "k": 10, "S": 5, "lr": 1e-4},
         "cost": {"seconds": 20.0, "steps": 5, "tokens": 1280, "examples": 10}, "loss": {"before": 3.2, "after": 2.5},
         "forget": _ci(0.6, 0.5, 0.7), "retain": _ci(0.8, 0.7, 0.9), "forget_recovered": _ci(0.5, 0.3, 0.7),
         "retain_recovered": None, "seed": 0},
        {"attack": "direction", "setting": {"basis": "top singular vector", "state": "base model (control)"},
         "cost": cost, "forget": _ci(0.7, 0.6, 0.8), "retain": _ci(0.6, 0.5, 0.7), "forget_recovered": None,
         "retain_recovered": None},
        {"attack": "probe", "setting": {"layers": [3, 6], "train": 40, "test": 30}, "cost": cost, "forget": None,
         "retain": None, "forget_recovered": None, "retain_recovered": None,
         "probe": {"per_layer": [[3, 0.5, 0.45], [6, 0.8, 0.75]], "chance": 0.25}},
    ]  # fmt: skip


def _write(root, target: str, forget_unlearned: float, fail: bool = False):
    identity = {"command": "attack", "model": "gemma-3-270m", "target": target, "target_name": target,
                "target_kind": "hook"}  # fmt: skip
    if fail:
        with pytest.raises(RuntimeError), open_run("attack", identity, root=root) as run:
            run.write_json(
                "metrics.json", {"target": target, "kind": "hook", "rows": _rows(forget_unlearned)}
            )
            raise RuntimeError("boom")
        return
    with open_run("attack", identity, root=root) as run:
        run.write_json("metrics.json", {"target": target, "kind": "hook", "rows": _rows(forget_unlearned)})
    time.sleep(0.01)  # distinct finish times


def test_attack_tables_only_completed_newest_per_target(tmp_path):
    assert attack_tables(tmp_path) == []  # no runs: no tables
    _write(tmp_path, "intervene:a/clamp", 0.5)  # older run of the same target: replaced
    _write(tmp_path, "intervene:a/clamp", 0.3)
    _write(tmp_path, "rmu:r1", 0.3, fail=True)  # failed: left out
    (title, intro, table), (ptitle, pintro, probes) = attack_tables(tmp_path)
    assert "hidden" in title and "recovered" in intro and "arXiv 2409.18025" in intro
    assert set(table["target"]) == {"intervene:a/clamp"} and len(table) == 4  # probes in their own table
    unl = table[table["attack"] == "none: unlearned"].iloc[0]
    assert unl["forget % [95% CI]"] == "30.0 [20.0, 40.0]"  # the newer run
    rel = table[table["attack"].str.startswith("relearn")].iloc[0]
    assert rel["attack"] == "relearn forget k=10 S=5 lr=0.0001, loss 3.20→2.50"
    assert rel["recovered (forget) [95% CI]"] == "0.50 [0.30, 0.70]"
    assert rel["cost"] == "20 s, 5 steps, 1,280 tok, 10 ex"
    ctl = table[table["attack"].str.contains("control")].iloc[0]
    assert ctl["recovered (forget) [95% CI]"] == "–" and ctl["cost"] == "12 s"
    assert list(probes["layer"]) == [3, 6] and list(probes["probe acc unlearned %"]) == ["45.0", "75.0"]
    assert "decodable" in ptitle and "chance" in pintro
    assert all(isinstance(v, str) for v in table.drop(columns=[]).to_numpy().ravel())
