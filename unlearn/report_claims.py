"""Paired intervals and claims for `unlearn report`, from the per-question tables runs leave beside
their metrics (`questions.csv`, `questions/<point>.csv`, `questions_before/after.csv`).

A delta between two model states on the same questions is read with a *paired* bootstrap
(`unlearn.stats.paired_deltas`): the same resampled questions for both states, stratified by task. A
point is flagged as a claim only when (a) its pooled forget delta's 95% interval lies below 0 (a drop,
not noise), and (b) where its run holds a control point (`control` in the point JSON: random features or
a random direction at the same size), it forgets more than that control, again with a paired interval
below 0 — otherwise the drop may be what any perturbation of that size does.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from unlearn.report_collect import BASELINE_METHODS
from unlearn.stats import paired_deltas


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


def _control_for(df: pd.DataFrame, i) -> int | None:
    """The control point of row i's run at the same mode/scale/size, else at the same size."""
    same_run = df[(df["run"] == df.at[i, "run"]) & df["control"].notna() & (df.index != i)]
    if same_run.empty:
        return None
    for keys in (("mode", "scale", "n_features"), ("n_features",)):
        match = same_run
        for k in keys:
            match = match[match[k].astype(str) == str(df.at[i, k])]
        if len(match):
            return match.index[0]
    return same_run.index[0]


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
        c = _control_for(df, i)
        if c is not None:
            control = load(df.at[c, "questions_file"])
            vs = paired_deltas(point, control)["forget"] if control is not None else None
            if vs is None:
                claim = False
            else:
                df.at[i, "vs_control_forget"], df.at[i, "vs_control_lo"] = vs.value, vs.low
                df.at[i, "vs_control_hi"] = vs.high
                claim = claim and vs.high < 0
        df.at[i, "claim"] = claim
    if missing:
        notes.append(
            f"{len(missing)} row(s) without per-question tables for them or their baseline (older runs?): "
            "no paired intervals, so never flagged as claims: "
            + ", ".join(missing[:5])
            + (" …" if len(missing) > 5 else "")
        )
