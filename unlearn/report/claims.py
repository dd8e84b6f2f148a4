"""Paired intervals and claims for `unlearn report`, from the per-question tables runs leave beside
their metrics (`questions.csv`, `questions/<point>.csv`, `questions_before/after.csv`).

A delta between two model states on the same questions is read with a *paired* bootstrap
(`unlearn.stats.paired_deltas`): the same resampled questions for both states, stratified by task. A
point is flagged as a claim only when (a) its pooled forget delta's 95% interval lies below 0 (a drop,
not noise), and (b) where it has control points (`<point>_ctrl-*`: random features or a random direction at the
same size, and for a gated point the same gate), it forgets more than every one of them, again with a
paired interval below 0 (the table shows the hardest control) — otherwise the drop may be what any perturbation of that size does.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from unlearn.report.collect import BASELINE_METHODS
from unlearn.stats import paired_deltas

FRONTIER_RETAIN = 0.99
"""Retain floor of the frontier comparison (SAEBench's unlearning score keeps points with MMLU ≥ 0.99;
Karvonen et al., arXiv 2503.09532)."""


def _loader():
    cache: dict[str, pd.DataFrame | None] = {}

    def load(path) -> pd.DataFrame | None:
        if not isinstance(path, str):
            return None
        if path not in cache:
            try:
                cache[path] = pd.read_csv(Path(path))
            except (OSError, ValueError, pd.errors.ParserError):
                cache[path] = None
        return cache[path]

    return load


def _controls_for(df: pd.DataFrame, i) -> list:
    """Row i's own control points: `<point>_ctrl-*` in the same run (`clamp_controls.with_controls`).
    A point without them (zero ablation, or a sweep run with `--controls none`) has no control."""
    own = df[(df["run"] == df.at[i, "run"]) & df["control"].notna()]
    own = own[own["point"].astype(str).str.startswith(f"{df.at[i, 'point']}_ctrl-")]
    return list(own.index)


def add_paired_intervals(df: pd.DataFrame, notes: list[str]) -> None:
    """Fill the delta interval columns, the vs-control columns and `claim` (in place)."""
    load = _loader()
    cols = ["delta_forget_lo", "delta_forget_hi", "delta_retain_lo", "delta_retain_hi",
            "delta_forget_all", "delta_forget_all_lo", "delta_forget_all_hi",
            "delta_retain_all", "delta_retain_all_lo", "delta_retain_all_hi",
            "vs_control_forget", "vs_control_lo", "vs_control_hi"]  # fmt: skip
    for c in cols:
        df[c] = math.nan
    df["claim"] = False
    by_id = {rid: i for i, rid in zip(df.index, df["row_id"], strict=True)}
    missing = []
    for i in df.index:
        if df.at[i, "method"] in BASELINE_METHODS:
            continue
        ref = by_id.get(df.at[i, "ref"]) if isinstance(df.at[i, "ref"], str) else None
        point, base = (
            load(df.at[i, "questions_file"]),
            load(df.at[ref, "questions_file"]) if ref is not None else None,
        )
        if point is None or base is None or df.at[ref, "section"] != df.at[i, "section"]:
            missing.append(df.at[i, "row_id"])
            continue
        d = paired_deltas(point, base)
        for role in ("forget", "retain"):
            for key, col in ((role, f"delta_{role}"), (f"{role}_all", f"delta_{role}_all")):
                if d.get(key) is None:
                    continue
                if key.endswith("_all"):
                    df.at[i, col] = d[key].value
                df.at[i, f"{col}_lo"], df.at[i, f"{col}_hi"] = d[key].low, d[key].high
        claim = bool(df.at[i, "delta_forget_hi"] < 0)
        if pd.notna(df.at[i, "control"]):
            df.at[i, "claim"] = False  # a control is the comparison, never a claim
            continue
        vs_all = []
        for c in _controls_for(df, i):
            control = load(df.at[c, "questions_file"])
            vs_all.append(paired_deltas(point, control)["forget"] if control is not None else None)
        if vs_all:
            if any(v is None for v in vs_all):
                claim = False
            else:  # shown: the hardest control (least forget below it); claimed only below every one
                vs = max(vs_all, key=lambda v: v.value)
                df.at[i, "vs_control_forget"], df.at[i, "vs_control_lo"] = vs.value, vs.low
                df.at[i, "vs_control_hi"] = vs.high
                claim = claim and all(v.high < 0 for v in vs_all)
        df.at[i, "claim"] = claim
    if missing:
        notes.append(
            f"{len(missing)} row(s) without per-question tables for them or their baseline (older runs?): "
            "no paired intervals, so never flagged as claims: "
            + ", ".join(missing[:5])
            + (" …" if len(missing) > 5 else "")
        )


def family(row) -> str:
    """What kind of method a row is, for the frontier: static/gated clamp (with the gate), zero, RMU."""
    method = str(row["method"])
    gate = row.get("gate")
    if method == "sae-clamp":
        return f"gated clamp ({gate})" if isinstance(gate, str) and gate != "none" else "static clamp"
    return {"sae-zero": "zero ablation", "rmu": "RMU"}.get(method, method)


def frontier_table(points: pd.DataFrame, floor: float = FRONTIER_RETAIN) -> pd.DataFrame:
    """Per section, each method family's lowest-forget point with retain ≥ `floor` (controls excluded),
    and the paired forget difference of the section's best point against it: the comparison "beats X at
    the same retain" is read from that interval (separated = its upper end below 0)."""
    load = _loader()
    rows = []
    real = points[~points["method"].isin(BASELINE_METHODS) & points["control"].isna()]
    for section, sec in real.groupby("section"):
        sec = sec.dropna(subset=["forget_acc", "retain_acc"]).assign(family=lambda d: d.apply(family, axis=1))
        ok = sec[sec["retain_acc"] >= floor - 1e-9]
        best = {f: g.loc[g["forget_acc"].idxmin()] for f, g in ok.groupby("family")}
        if not best:
            continue
        top = min(best.values(), key=lambda r: r["forget_acc"])
        top_frame = load(top["questions_file"])
        for fam in sorted(set(sec["family"])):
            row = {"section": int(section), "family": fam}
            if fam not in best:
                rows.append(row | {"point": f"none reaches retain ≥ {floor:g}"})
                continue
            r = best[fam]
            row |= {"run": r["run"], "point": r["point"],
                    "forget": f"{r['forget_acc']:.3f} [{r['forget_lo']:.3f}, {r['forget_hi']:.3f}]",
                    "retain": f"{r['retain_acc']:.3f} [{r['retain_lo']:.3f}, {r['retain_hi']:.3f}]"}  # fmt: skip
            other = load(r["questions_file"])
            if r is not top and top_frame is not None and other is not None:
                d = paired_deltas(top_frame, other)["forget"]
                if d is not None:
                    row["best − this (forget)"] = f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
                    row["separated"] = "yes" if d.high < 0 else "no"
            elif r is top:
                row["best − this (forget)"] = "best"
            rows.append(row)
    return pd.DataFrame(rows)


FRONTIER_INTRO = (
    f"At retain ≥ {FRONTIER_RETAIN:g} (known subset), the lowest forget accuracy each kind of method reaches, "
    "and the best point's paired forget difference against it (the same questions resampled for both; "
    "separated = the interval lies below 0). A kind with no point that keeps retain this high cannot be "
    "compared at this retain."
)
