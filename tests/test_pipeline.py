"""End to end on the real embedded model: the README's main job, shrunk (`unlearn demo --quick`)."""

from __future__ import annotations

import pytest

from unlearn.results import EvalBlock, read_json


@pytest.mark.slow
def test_demo_quick_runs_offline_to_a_report(tmp_path, monkeypatch):
    from unlearn.demo import DemoConfig, run_demo

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    report_dir = run_demo(DemoConfig(quick=True, scales=[-20.0]))

    for name in ("report.md", "report.html", "combined.csv"):
        assert (report_dir / name).stat().st_size > 0
    assert list(report_dir.glob("*.png"))
    sweeps = {}
    for sweep in (tmp_path / "intervene").iterdir():
        points = {p.stem: read_json(p) for p in (sweep / "points").glob("*.json")}
        sweeps[next(iter(points.values()))["rank_by"]] = points
        base = EvalBlock.from_dict(read_json(sweep / "baseline.json"))
        assert base.forget_acc == 1.0 and base.retain_acc == 1.0  # known subsets, unhooked
    assert set(sweeps["freq"]) == {"zero_n20", "clamp_n20_s-20"}
    assert set(sweeps["ratio"]) == {"clamp_n20_s-20"}  # same counters, re-ranked
    selections = sorted((tmp_path / "select-features").iterdir())
    assert read_json(selections[1] / "config.json")["counters_from"] == str(selections[0])
    (rmu,) = (tmp_path / "rmu-baseline").iterdir()
    assert {"before", "after"} <= set(read_json(rmu / "metrics.json"))
    assert (rmu / "weights.safetensors").exists()
