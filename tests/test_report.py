"""`unlearn report` on a synthetic results tree written with the same helpers the commands use.

Expected values (pooled accuracies, deltas, Pareto front, SAEBench score) are computed independently
here: by hand for the front and the score, with numpy for question-weighted pooling.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from unlearn.errors import UnlearnError
from unlearn.report.run import ReportConfig, collect, collect_runs, pareto_mask, run_report, saebench_scores
from unlearn.results import EvalBlock, TaskScore, mark_complete, new_run_dir, write_bytes, write_json

PRESET, MODEL = "gemma-2-2b-it", "google/gemma-2-2b-it"
GEO, AGING = "mmlu:high_school_geography", "mmlu:human_aging"
N_FORGET, N_GEO, N_AGING = 100, 40, 60

# point id -> (scale, n_features, forget, geography, aging)
GRID = {
    "p1": (10, 10, 0.90, 1.00, 1.00),
    "p2": (50, 10, 0.70, 1.00, 0.99),
    "p3": (100, 10, 0.30, 0.80, 0.70),
    "p4": (10, 20, 0.85, 1.00, 1.00),
    "p5": (50, 20, 0.60, 0.95, 0.98),
    "p6": (100, 20, 0.35, 0.70, 0.70),
}
RMU_AFTER = (0.65, 1.00, 0.99)


def block(
    forget: float, geo: float, aging: float, protocol="letter-perm24", subset="known", n_forget=N_FORGET
):
    scores = [
        TaskScore("wmdp-bio", "forget", protocol, subset, n_forget, forget),
        TaskScore(GEO, "retain", protocol, subset, N_GEO, geo),
        TaskScore(AGING, "retain", protocol, subset, N_AGING, aging),
        TaskScore("mmlu:college_biology", "other", protocol, subset, 20, 0.9),
    ]
    return EvalBlock.from_scores(scores)


def pooled_retain(geo: float, aging: float) -> float:
    return float(np.average([geo, aging], weights=[N_GEO, N_AGING]))


def cfg(command: str, **extra) -> dict:
    return {"command": command, "preset": PRESET, "model": MODEL, **extra}


def build_tree(root: Path) -> Path:
    """A results tree with a clamp sweep, another protocol, RMU, evals, features and two corrupt runs."""
    run = new_run_dir("intervene", "20260101-000000", root)
    write_json(
        run / "config.json",
        cfg("intervene", sae="gemma-scope", hook="blocks.3.hook_resid_post", mode="clamp"),
    )
    write_json(run / "baseline.json", block(1.0, 1.0, 1.0))
    for pid, (scale, n, f, g, a) in GRID.items():
        point = {"mode": "clamp", "scale": scale, "n_features": n, "features": list(range(n)),
                 "retain_threshold": 0.01, "metrics": block(f, g, a)}  # fmt: skip
        write_json(run / "points" / f"{pid}.json", point)
    # the same model under another protocol and subset: must land in its own section
    other = new_run_dir("intervene", "20260102-000000", root)
    write_json(other / "config.json", cfg("intervene", mode="clamp"))
    write_json(other / "baseline.json", block(0.6, 0.7, 0.7, protocol="letter", subset="all"))
    write_json(other / "points" / "q1.json", {"mode": "clamp", "scale": 50, "n_features": 10,
                                              "metrics": block(0.4, 0.6, 0.7, protocol="letter", subset="all")})  # fmt: skip
    rmu = new_run_dir("rmu-baseline", "20260103-000000", root)
    write_json(rmu / "config.json", cfg("rmu-baseline", layer=3, steering_coeff=400.0, alpha=100.0))
    write_json(rmu / "metrics.json", {"before": block(1.0, 1.0, 1.0), "after": block(*RMU_AFTER)})
    ev = new_run_dir("eval", "20260104-000000", root)
    write_json(ev / "config.json", cfg("eval", protocol="letter-perm24"))
    write_json(ev / "metrics.json", block(1.0, 1.0, 1.0))
    ev_rmu = new_run_dir("eval", "20260105-000000", root)
    write_json(
        ev_rmu / "config.json", cfg("eval", rmu=str(rmu / "weights.safetensors"))
    )  # --rmu names the file
    write_json(ev_rmu / "metrics.json", block(0.5, 0.9, 1.0))
    # same protocol and subset but other questions (a --limit run): its own section too
    lim = new_run_dir("eval", "20260106-000000", root)
    write_json(lim / "config.json", cfg("eval"))
    write_json(lim / "metrics.json", block(1.0, 1.0, 1.0, n_forget=10))
    sel = new_run_dir("select-features", "20260100-000000", root)
    write_json(sel / "config.json", cfg("select-features", sae="gemma-scope"))
    stats = [
        {"feature": 7, "forget_freq": 0.2, "retain_freq": 0.001, "ratio": 200.0, "top_tokens": ["virus"]}
    ]
    write_json(sel / "features.json", {"topics": {"bio": {"features": [7, 3], "stats": stats}}})
    # corrupt runs: broken JSON, and a missing required key
    bad = new_run_dir("intervene", "20260107-broken", root)
    write_bytes(bad / "config.json", b"{not json")
    bad2 = new_run_dir("rmu-baseline", "20260108-nokey", root)
    write_json(bad2 / "config.json", cfg("rmu-baseline"))
    write_json(bad2 / "metrics.json", {"before": block(1.0, 1.0, 1.0)})
    failed = new_run_dir("rmu-baseline", "20260109-failed", root)
    write_json(failed / "config.json", cfg("rmu-baseline"))
    write_bytes(failed / "FAILED", b"RuntimeError: CUDA out of memory\n")
    no_eval = new_run_dir("rmu-baseline", "20260110-noeval", root)
    write_json(no_eval / "config.json", cfg("rmu-baseline"))
    for run_dir in root.glob("*/*"):  # finished runs carry a completion record; the failed one does not
        if not (run_dir / "FAILED").exists():
            mark_complete(run_dir)
    return root


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return build_tree(tmp_path / "results")


def _main_sweep(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["run"] == "intervene/20260101-000000"].set_index("point")


def test_table_values_and_deltas(tree: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="unlearn"):
        df = collect_runs(tree)
    sweep = _main_sweep(df)
    for pid, (scale, n, f, g, a) in GRID.items():
        row = sweep.loc[pid]
        assert row["method"] == "sae-clamp" and row["scale"] == scale and row["n_features"] == n
        assert row["forget_acc"] == pytest.approx(f)
        assert row["retain_acc"] == pytest.approx(pooled_retain(g, a))
        assert row["retain_mean"] == pytest.approx((g + a) / 2)
        assert row["delta_forget"] == pytest.approx(f - 1.0)
        assert row["delta_retain"] == pytest.approx(pooled_retain(g, a) - 1.0)
        assert row[f"delta:retain:{GEO}"] == pytest.approx(g - 1.0)
        assert row["preset"] == PRESET and row["protocol"] == "letter-perm24" and row["subset"] == "known"
    assert sweep.loc["baseline", "method"] == "base" and sweep.loc["baseline", "delta_forget"] == 0
    rmu = df[(df["run"] == "rmu-baseline/20260103-000000") & (df["method"] == "rmu")].iloc[0]
    assert rmu["layer"] == 3 and rmu["steering_coeff"] == 400.0
    assert rmu["delta_forget"] == pytest.approx(RMU_AFTER[0] - 1.0)
    # an RMU model scored by `unlearn eval --rmu`: compared with the plain eval of its section
    ev_rmu = df[df["run"] == "eval/20260105-000000"].iloc[0]
    assert ev_rmu["method"] == "rmu" and ev_rmu["alpha"] == 100.0
    assert ev_rmu["delta_retain"] == pytest.approx(pooled_retain(0.9, 1.0) - 1.0)


def test_corrupt_runs_skipped_with_a_warning_naming_them(tree: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="unlearn"):
        c = collect(tree)
    assert "20260107-broken" in caplog.text and "20260108-nokey" in caplog.text
    assert "'after'" in caplog.text  # says which key is missing
    assert not c.points["run"].str.contains("broken|nokey").any()
    assert any("20260107-broken" in n for n in c.notes)
    assert any("20260109-failed" in n and "out of memory" in n for n in c.notes)
    assert any("20260110-noeval" in n and "unlearn eval --rmu" in n for n in c.notes)


def test_sections_never_mix_protocols_subsets_or_question_sets(tree: Path):
    c = collect(tree)
    df = c.points
    for _, g in df.groupby("section"):
        assert g["protocol"].nunique() == 1 and g["subset"].nunique() == 1 and g["tasks"].nunique() == 1
    sec = df.set_index("run")["section"]
    assert sec["intervene/20260101-000000"].nunique() == 1
    assert sec["intervene/20260102-000000"].iloc[0] != sec["intervene/20260101-000000"].iloc[0]
    assert sec["eval/20260106-000000"] != sec["eval/20260104-000000"]
    assert sec["eval/20260104-000000"] == sec["intervene/20260101-000000"].iloc[0]
    from unlearn.report.render import separation_reasons

    reasons = " ".join(separation_reasons(df))
    assert "protocol (letter vs letter-perm24)" in reasons and "question sets" in reasons


def test_pareto_front_and_saebench_score(tree: Path):
    df = collect_runs(tree)
    main = df[df["section"] == _main_sweep(df)["section"].iloc[0]]
    front = set(main.loc[main["pareto"], "run"] + "#" + main.loc[main["pareto"], "point"])
    # by hand: p1 < p4, p2 < rmu(0.65, 0.994), p6 < p3; the unhooked model and eval rows are not candidates
    sweep = "intervene/20260101-000000#"
    assert front == {sweep + "p3", sweep + "p4", sweep + "p5", "rmu-baseline/20260103-000000#after",
                     "eval/20260105-000000#eval"}  # fmt: skip
    # second code path: brute-force dominance check with numpy
    cand = main[~main["method"].isin(["base", "eval"])]
    fr = cand[["forget_acc", "retain_acc"]].to_numpy()
    brute = [
        not any((o[0] <= p[0]) & (o[1] >= p[1]) & ((o[0] < p[0]) | (o[1] > p[1])) for o in fr) for p in fr
    ]
    assert list(pareto_mask(main)[cand.index]) == brute
    scores = saebench_scores(df).set_index("run")
    s = scores.loc["intervene/20260101-000000"]
    # retain >= 0.99: p1 (1.0), p2 (0.994), p4 (1.0) -> min forget 0.70 -> score 0.30
    assert s["n_retain_ok"] == 3 and s["best_point"] == "p2" and s["score"] == pytest.approx(0.30)
    assert scores.loc["intervene/20260102-000000", "score"] == 0.0  # no point keeps retain >= 0.99


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, str]:
    """One full report (plots take most of the time), shared by the file and browser tests."""
    root = tmp_path_factory.mktemp("full")
    buf = io.StringIO()
    out = run_report(ReportConfig(results=build_tree(root / "results"), out=root / "report"),
                     console=Console(file=buf, width=250))  # fmt: skip
    return out, buf.getvalue()


def test_report_files_and_self_contained_html(full_report):
    out, terminal = full_report
    assert "Section 1" in terminal and "SAEBench" in terminal and "20260107-broken" in terminal
    html = (out / "report.html").read_text()
    assert not re.search(r"https?://|<link|<script|src=['\"](?!data:)", html, re.I)
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(pngs) >= 3 and all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    md = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert linked and all((out / name).exists() for name in linked)
    assert "0.787" in md  # the published gemma-2-2b-it numbers are shown
    csv = pd.read_csv(out / "combined.csv")
    p3 = csv[(csv["run"] == "intervene/20260101-000000") & (csv["point"] == "p3")].iloc[0]
    assert p3["retain_acc"] == pytest.approx(pooled_retain(0.8, 0.7)) and bool(p3["pareto"])


def test_filters_and_bad_options(tree: Path, tmp_path: Path):
    out = run_report(ReportConfig(results=tree, out=tmp_path / "r", formats=("csv",), method="rmu"),
                     console=Console(file=io.StringIO()))  # fmt: skip
    csv = pd.read_csv(out / "combined.csv")
    assert set(csv["method"]) == {"rmu", "base", "eval"}
    quiet = Console(file=io.StringIO())
    with pytest.raises(UnlearnError, match="presets in the results: gemma-2-2b-it"):
        run_report(ReportConfig(results=tree, out=tmp_path / "x", preset="gemma-7b"), console=quiet)
    with pytest.raises(UnlearnError, match="unknown method"):
        run_report(ReportConfig(results=tree, out=tmp_path / "x", method="lora"), console=quiet)
    with pytest.raises(UnlearnError, match="--format"):
        run_report(ReportConfig(results=tree, out=tmp_path / "x", formats=("pdf",)), console=quiet)


def test_empty_or_missing_results_say_what_is_missing(tmp_path: Path):
    with pytest.raises(UnlearnError, match="no results folder.*--results"):
        collect(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnlearnError, match="unlearn intervene") as e:
        collect(tmp_path / "empty")
    assert "unlearn rmu-baseline" in str(e.value)
    # a partial tree: a sweep without RMU is reported, with a note naming what is missing
    run = new_run_dir("intervene", "a", tmp_path / "partial")
    write_json(run / "config.json", cfg("intervene"))
    write_json(run / "baseline.json", block(1.0, 1.0, 1.0))
    mark_complete(run)
    c = collect(tmp_path / "partial")
    assert len(c.points) == 1 and any("no rmu-baseline runs" in n for n in c.notes)
    assert any("partial run" in n for n in c.notes)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_renders_in_headless_chromium(full_report, tmp_path: Path):
    if CHROMIUM is None:  # CI installs it (.ci/run); there a missing browser is a failure, not a skip
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but chromium is not installed: .ci/run must apt-get install chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    out = full_report[0]
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
           (out / "report.html").resolve().as_uri()]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels[..., :3].std() > 0.05  # text, tables and plots, not a blank page


def test_saebench_score_threshold_is_inclusive():
    # retain exactly 0.99 qualifies; float pooling may land a hair below (here 0.9899999999999999)
    pts = pd.DataFrame(
        {
            "section": 1,
            "group": "g",
            "run": "intervene/a",
            "subset": "known",
            "command": "intervene",
            "method": "sae-clamp",
            "point": ["x", "y", "z"],
            "forget_acc": [0.50, 0.20, 0.70],
            "retain_acc": [sum([0.99] * 3) / 3, 0.985, 1.0],
        }  # fmt: skip
    )
    s = saebench_scores(pts).iloc[0]
    assert s["n_retain_ok"] == 2 and s["best_point"] == "x" and s["score"] == pytest.approx(0.5)


def test_typer_command(tree: Path, tmp_path: Path):
    import typer
    from typer.testing import CliRunner

    from unlearn.report.run import report_command

    app = typer.Typer()
    app.command("report")(report_command)
    app.command("other")(lambda: None)  # two commands, so `report` is a subcommand as in unlearn.cli
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["report", "--results", str(tree), "--out", str(out), "--format", "csv",
                                   "--preset", PRESET, "--method", "sae"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert set(pd.read_csv(out / "combined.csv")["method"]) == {"sae-clamp", "base", "eval"}


def test_point_labels_name_only_the_settings_a_point_has():
    from unlearn.report.render import params_text

    clamp = pd.Series(
        {
            "method": "sae-clamp",
            "scale": -20.0,
            "n_features": 20,
            "retain_threshold": 0.01,
            "rank_by": "ratio",
        }
    )
    zero = pd.Series({"method": "sae-zero", "scale": np.nan, "n_features": 20, "retain_threshold": 0.01})
    rmu = pd.Series({"method": "rmu", "layer": 2, "steering_coeff": 2000.0, "alpha": 100.0})
    assert params_text(clamp) == "scale=-20 n=20 thr=0.01 rank=ratio"
    assert params_text(zero) == "n=20 thr=0.01"
    assert params_text(rmu) == "L2 c=2000 α=100"


# ---------------------------------------------------------------- intervals, splits, claims

N_F, N_R = 120, 150


def _frame(forget_correct, retain_correct, known_f, known_r) -> pd.DataFrame:
    """A per-question table laid out as `EvalSuite.run` writes it (one forget task, one retain task)."""
    rows = [{"task": "offline:bio@test", "role": "forget", "index": i, "correct": bool(c), "known": bool(k)}
            for i, (c, k) in enumerate(zip(forget_correct, known_f, strict=True))]  # fmt: skip
    rows += [{"task": "offline:retain@test/history", "role": "retain", "index": i, "correct": bool(c),
              "known": bool(k)} for i, (c, k) in enumerate(zip(retain_correct, known_r, strict=True))]  # fmt: skip
    return pd.DataFrame(rows)


def _block(frame: pd.DataFrame, split: str) -> EvalBlock:
    from unlearn.eval.suite import EvalTask, block_from_frame, task_score

    scores = [
        task_score(
            g.reset_index(drop=True), EvalTask(task, g["role"].iloc[0], [], split=split), "cloze", "known"
        )
        for task, g in frame.groupby("task", sort=False)
    ]
    return block_from_frame(scores, frame)


def build_split_tree(root: Path) -> tuple[Path, dict[str, pd.DataFrame]]:
    """An intervene run on the test split with a real drop, a drop its control matches, a null point and
    a random-features control; a dev run beside it; a selection with an AUROC."""
    rng = np.random.default_rng(0)
    known_f, known_r = rng.random(N_F) < 0.6, rng.random(N_R) < 0.7
    base_f, base_r = known_f | (rng.random(N_F) < 0.3), known_r | (rng.random(N_R) < 0.3)
    forgotten = base_f & (rng.random(N_F) < 0.6)  # the clamp forgets ~60% of what was right
    frames = {
        "baseline": _frame(base_f, base_r, known_f, known_r),
        "real": _frame(base_f & ~forgotten, base_r, known_f, known_r),
        "null": _frame(base_f ^ (rng.random(N_F) < 0.02), base_r, known_f, known_r),
        "matched": _frame(base_f & ~forgotten, base_r, known_f, known_r),
        "real_ctrl-features": _frame(base_f, base_r, known_f, known_r),
        "matched_ctrl-features": _frame(base_f & ~forgotten, base_r, known_f, known_r),
    }
    for split in ("test", "dev"):
        run = new_run_dir("intervene", f"2026-{split}", root)
        write_json(run / "config.json", cfg("intervene", mode="clamp"))
        mark_complete(run)  # the report reads completed runs only
        write_json(run / "baseline.json", _block(frames["baseline"], split))
        frames["baseline"].to_csv(run / "questions" / "baseline.csv", index=False) if (
            run / "questions").mkdir() is None else None  # fmt: skip
        points = {"real": (10, -20, None), "null": (10, -5, None), "real_ctrl-features": (10, -20, "random-features"),
                  "matched": (20, -20, None), "matched_ctrl-features": (20, -20, "random-features")}  # fmt: skip
        for pid, (n, scale, control) in points.items():
            write_json(run / "points" / f"{pid}.json", {"mode": "clamp", "scale": scale, "n_features": n,
                       "control": control, "metrics": _block(frames[pid], split)})  # fmt: skip
            frames[pid].to_csv(run / "questions" / f"{pid}.csv", index=False)
        if split == "dev":
            break
    sel = new_run_dir("select-features", "2026-sel", root)
    write_json(sel / "config.json", cfg("select-features"))
    mark_complete(sel)
    write_json(sel / "features.json", {"topics": {"bio": {"features": [7], "auroc": 0.8125}}})
    return root, frames


def test_intervals_paired_deltas_and_claims(tmp_path: Path):
    from unlearn.stats import paired_deltas

    root, frames = build_split_tree(tmp_path / "results")
    pts = collect(root).points
    test = pts[pts["run"] == "intervene/2026-test"].set_index("point")
    base = frames["baseline"]
    # pooled accuracy on the known subset and on all questions, with intervals around them
    kf = base[(base.role == "forget") & base.known]
    assert test.at["baseline", "forget_acc"] == pytest.approx(kf.correct.mean())
    assert test.at["baseline", "forget_acc_all"] == pytest.approx(base[base.role == "forget"].correct.mean())
    se = np.sqrt(kf.correct.mean() * (1 - kf.correct.mean()) / len(kf))
    width = test.at["baseline", "forget_hi"] - test.at["baseline", "forget_lo"]
    assert width == pytest.approx(2 * 1.96 * se, rel=0.25)
    # paired delta intervals: the known-subset difference and the function's own interval
    real = frames["real"]
    diff = real.correct.astype(float) - base.correct.astype(float)
    assert test.at["real", "delta_forget"] == pytest.approx(diff[(base.role == "forget") & base.known].mean())
    ref = paired_deltas(real, base)
    assert (test.at["real", "delta_forget_lo"], test.at["real", "delta_forget_hi"]) == pytest.approx(
        (ref["forget"].low, ref["forget"].high)
    )
    assert test.at["real", "delta_forget_all"] == pytest.approx(ref["forget_all"].value)
    # claims: a drop beyond its control; not a null point, not a drop its control matches, not a control
    assert test.at["real", "claim"] and test.at["real", "vs_control_hi"] < 0
    assert test.at["real", "delta_forget_hi"] < 0
    assert (
        not test.at["null", "claim"]
        and test.at["null", "delta_forget_lo"] <= 0 <= test.at["null", "delta_forget_hi"]
    )
    assert test.at["matched", "delta_forget_hi"] < 0 and not test.at["matched", "claim"]
    assert test.at["matched", "vs_control_forget"] == pytest.approx(0.0)
    assert not test.at["real_ctrl-features", "claim"] and not test.at["matched_ctrl-features", "claim"]
    assert pd.isna(test.at["null", "vs_control_forget"])  # no own control: never paired with another point's
    assert set(pts["split"]) == {"test", "dev"}
    assert pts.groupby("section")["split"].nunique().max() == 1  # splits never share a section


def test_report_shows_intervals_splits_claims_and_auroc(tmp_path: Path):
    root, _ = build_split_tree(tmp_path / "results")
    quiet = Console(file=io.StringIO())
    out = run_report(ReportConfig(results=root, out=tmp_path / "r", formats=("md", "html")), console=quiet)
    md = (out / "report.md").read_text()
    assert re.search(r"\| 0\.\d{3} \[0\.\d{3}, 0\.\d{3}\] \|", md)  # accuracy with its interval
    assert re.search(r"-0\.\d{3} \[-0\.\d{3}, -0\.\d{3}\]", md)  # a paired delta interval below 0
    assert "· split test" in md and "· split dev" not in md and "2026-dev" not in md
    assert "forget all" in md and "control (random-features)" in md and "✓" in md and "0.812" in md
    assert "[0." in (out / "report.html").read_text() and re.search(r"s\d+_tradeoff\.png", md)
    dev = run_report(
        ReportConfig(results=root, out=tmp_path / "d", formats=("md",), split="dev"), console=quiet
    )
    dev_md = (dev / "report.md").read_text()
    assert "· split dev" in dev_md and "2026-test" not in dev_md
    both = run_report(
        ReportConfig(results=root, out=tmp_path / "a", formats=("md",), split="all"), console=quiet
    )
    assert (
        "split dev" in (both / "report.md").read_text() and "split test" in (both / "report.md").read_text()
    )
    with pytest.raises(UnlearnError, match="split"):
        run_report(ReportConfig(results=root, out=tmp_path / "x", split="train"), console=quiet)


def test_gate_and_dilution_tables_read_completed_runs_only(tmp_path: Path):
    from unlearn.clamp.gates import Gate
    from unlearn.report.extras import dilution_table, extra_tables, gate_table

    gate = Gate("window", 0.3125, features=(1, 2), target_fpr=0.05,
                measured_fpr={"dev": 0.05, "retain_test": 0.04, "forget_test": 0.5})  # fmt: skip
    for name, done in (("done", True), ("killed", False)):
        run = tmp_path / "intervene" / name
        write_json(run / "points" / "clamp_n2_s-5_gate-window.json", {"gate": gate.to_json(), "metrics": {}})
        write_json(run / "points" / "clamp_n2_s-5.json", {"gate": None, "metrics": {}})
        base = {
            "prefix_tokens": [0, 100],
            "acc": [1.0, 0.9],
            "ci": [[1.0, 1.0], [0.8, 1.0]],
            "fired": [None, None],
        }
        write_json(run / "dilution" / "baseline.json", base)
        write_json(run / "dilution" / "clamp_n2_s-5_gate-window.json",
                   {"point": "clamp_n2_s-5_gate-window", "prefix_tokens": [0, 100], "acc": [0.5, 0.75],
                    "ci": [[0.4, 0.6], [0.6, 0.9]], "fired": [0.5, 0.25],
                    "benign": {"prefix_tokens": [0, 100], "acc": [1.0, 0.5], "ci": [[1.0, 1.0], [0.25, 0.75]],
                               "fired": [0.05, 0.875], "touched": [0.0, 0.5]}})  # fmt: skip
        if done:
            mark_complete(run)
    gates = gate_table(tmp_path)
    assert list(gates["point"]) == ["clamp_n2_s-5_gate-window"] and list(gates["run"]) == ["done"]
    row = gates.iloc[0]
    assert (
        row["τ"] == "0.3125"
        and row["target FPR"] == "5.0%"
        and row["calibrated behind"] == "0 tokens"
        and row["fires: retain_test"] == "4.0%"
    )
    dil = dilution_table(tmp_path)
    assert list(dil["point"]) == ["unhooked", "clamp_n2_s-5_gate-window"]
    gated = dil.iloc[1]
    assert gated["forget @N=100"] == "0.750 [0.600, 0.900]" and gated["fires @N=0"] == "50.0%"
    assert gated["max rise vs N=0"] == "+0.250"
    assert gated["retain: fires @N=100"] == "87.5%" and gated["retain: changed @N=0"] == "0.0%"
    assert gated["retain @N=100"] == "0.500 [0.250, 0.750]"
    assert [t for t, _, _ in extra_tables(tmp_path)] == [
        "Gates: thresholds and firing rates",
        "Dilution check",
    ]


def test_frontier_compares_each_family_best_at_the_retain_floor(tmp_path):
    """Best point per family at retain ≥ 0.99 (controls never), paired forget difference vs the best."""
    from unlearn.report.claims import frontier_table

    def frame(n_right: int, name: str) -> str:
        rows = [{"task": "bio", "role": "forget", "index": i, "correct": i < n_right, "known": True}
                for i in range(100)]  # fmt: skip
        rows += [
            {"task": "ret", "role": "retain", "index": i, "correct": True, "known": True} for i in range(50)
        ]
        path = tmp_path / f"{name}.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        return str(path)

    def row(method, point, forget, retain, n_right, gate=None, control=None):
        return {"section": 1, "method": method, "run": "r", "point": point, "gate": gate, "control": control,
                "forget_acc": forget, "retain_acc": retain, "forget_lo": forget - 0.05,
                "forget_hi": forget + 0.05, "retain_lo": retain - 0.01, "retain_hi": 1.0,
                "questions_file": frame(n_right, point)}  # fmt: skip

    points = pd.DataFrame([
        row("sae-clamp", "static_weak", 0.90, 0.995, 90),
        row("sae-clamp", "static_strong", 0.50, 0.80, 50),  # below the floor
        row("sae-clamp", "gated", 0.70, 0.995, 70, gate="dsg"),
        row("sae-clamp", "gated_ctrl-direction", 0.10, 1.0, 10, gate="dsg", control="random-direction"),
        row("rmu", "after", 0.40, 0.90, 40),
        row("base", "baseline", 1.0, 1.0, 100),
    ])  # fmt: skip
    table = frontier_table(points).set_index("family")
    assert set(table.index) == {"static clamp", "gated clamp (dsg)", "RMU"}
    assert table.at["gated clamp (dsg)", "point"] == "gated"
    assert table.at["gated clamp (dsg)", "best − this (forget)"] == "best"
    assert table.at["static clamp", "point"] == "static_weak"
    diff = table.at["static clamp", "best − this (forget)"]
    assert diff.startswith("-0.200 [") and table.at["static clamp", "separated"] == "yes"
    assert table.at["RMU", "point"].startswith("none reaches retain")
