"""End to end on the real embedded model: the README's main job, shrunk (`unlearn demo --quick`)."""

from __future__ import annotations

import pytest

from unlearn.results import EvalBlock, read_json


@pytest.mark.slow
def test_demo_quick_runs_offline_to_a_report(tmp_path, monkeypatch):
    from unlearn.demo import DemoConfig, run_demo

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    report_dir = run_demo(DemoConfig(quick=True, scales=[-20.0], n_features=[20]))

    for name in ("report.md", "report.html", "combined.csv"):
        assert (report_dir / name).stat().st_size > 0
    attacks = sorted((tmp_path / "attack").iterdir())  # the reduced set on static, window-gated and RMU
    assert len(attacks) == 3 and all((a / "complete.json").exists() for a in attacks)
    assert "Attacks: is the knowledge gone, or only hidden?" in (report_dir / "report.md").read_text()
    assert list(report_dir.glob("*.png"))
    (sweep,) = (tmp_path / "intervene").iterdir()
    points = {p.stem: read_json(p) for p in (sweep / "points").glob("*.json")}
    base = EvalBlock.from_dict(read_json(sweep / "baseline.json"))
    assert base.forget_acc == 1.0 and base.retain_acc == 1.0  # known subsets, unhooked
    assert base.split == "test"  # reported on the test half; selection read dev text
    static, gated, dsg = "clamp_n20_s-20", "clamp_n20_s-20_gate-window", "clamp_n20_s-20_gate-dsg"
    assert set(points) == {"zero_n20", static, gated, dsg} | {
        f"{p}_ctrl-{c}" for p in (static, gated, dsg) for c in ("features", "direction")
    }
    # the dilution check: the unhooked model and each real clamp point, at every prefix length
    dilution = {p.stem: read_json(p) for p in (sweep / "dilution").glob("*.json")}
    assert set(dilution) == {"baseline", static, gated, dsg}
    assert all(d["prefix_tokens"] == [0, 20] and len(d["acc"]) == 2 for d in dilution.values())
    assert points[f"{static}_ctrl-features"]["control"] == "random-features"
    assert points[gated]["gate"]["kind"] == "window" and points[gated]["gate"]["target_fpr"] == 0.05
    (selection,) = (tmp_path / "select-features").iterdir()
    assert read_json(selection / "features.json")["topics"]["bio"]["auroc"] is not None
    (rmu,) = (tmp_path / "rmu-baseline").iterdir()
    assert {"before", "after"} <= set(read_json(rmu / "metrics.json"))
    assert (rmu / "weights.safetensors").exists()
