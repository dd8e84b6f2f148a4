"""Full-size dress rehearsal, reduced (slow): gemma-2-2b-it's real widths, vocabulary and soft-capping with
4 of its 26 layers, a random SAE in Gemma Scope's params.npz layout, the preset's letter protocol (chat
template, 24 packed orders) and one intervene point on one question per side (`bench/bench_fullsize.py`
runs all 26 layers and prints the projection)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_fullsize.py"


@pytest.mark.slow
def test_fullsize_pipeline_completes_with_finite_scores():
    spec = importlib.util.spec_from_file_location("bench_fullsize", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.rehearse(n_questions=1, n_layers=4)
    assert out["layers"] == 4 and out["questions"] == 2
    assert out["params"] > 256000 * 2304  # the real vocabulary x width embedding
    assert out["max_abs_vs_full_model"] < 1e-3  # packed scorer = the whole model's soft-capped logits
    assert out["known_tokens"] < out["unpacked_known_tokens"]
    for block in (out["base"], out["point"]):
        assert [s.role for s in block.scores] == ["forget", "retain"]
        for s in block.scores:
            assert s.n_all == 1 and s.acc_all is not None and math.isfinite(s.acc_all)
    for frame in out["frames"]:
        assert frame["pred"].between(0, 3).all() and len(frame) == 2
    assert math.isfinite(out["s_per_token"]) and out["rss_peak_gib"] > out["rss_start_gib"]
