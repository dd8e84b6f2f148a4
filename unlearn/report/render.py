"""Render the report's tables as rich (terminal), Markdown and self-contained HTML.

Only formatting lives here; what goes into a table (sections, deltas, Pareto front, scores) is decided
in `unlearn.report.run`. The HTML inlines its CSS and its PNGs as base64 data URIs and links nothing, so it
opens offline and can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from unlearn.report.plots import short_task, task_columns

WHY_SECTIONS = (
    "Numbers are grouped by model, evaluation protocol, question subset and question set. Letter-choice, "
    "cloze and lm-eval accuracies have different chance levels and scales, the known subset has baseline "
    "1.0 by construction, and pooled accuracies over different questions are different quantities, so "
    "runs that differ in any of these never share a column or a plot."
)


@dataclass
class Section:
    """One comparable block of rows plus what to show with it."""

    number: int
    title: str
    table: pd.DataFrame  # display strings
    plots: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG bytes
    scores: pd.DataFrame | None = None  # SAEBench scores of the sweeps in this section


def _num(x: Any, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{float(x):+.3f}" if signed else f"{float(x):.3f}"


def _g(x: Any) -> str:
    return f"{float(x):g}" if isinstance(x, int | float) and not math.isnan(float(x)) else ""


def params_text(row: pd.Series) -> str:
    """A compact description of the point: clamp settings for SAE points, layer/c/alpha for RMU."""
    if str(row["method"]).startswith("sae-"):
        values = (
            ("scale", row.get("scale")),
            ("n", row.get("n_features")),
            ("thr", row.get("retain_threshold")),
            ("rank", row.get("rank_by")),
        )
        shown = [(k, v if isinstance(v, str) else _g(v)) for k, v in values]
        return " ".join(f"{k}={v}" for k, v in shown if v)  # zero ablation has no scale
    if row["method"] == "rmu":
        keys = (("layer", "L"), ("steering_coeff", "c="), ("alpha", "α="))
        return " ".join(f"{p}{_g(row[k])}" for k, p in keys if _g(row.get(k)))
    return ""


def with_ci(x: Any, lo: Any = None, hi: Any = None, signed: bool = False) -> str:
    """`0.520 [0.450, 0.590]`; the bare number where no interval was recorded (older runs)."""
    text = _num(x, signed)
    if text and _num(lo) and _num(hi):
        text += f" [{_num(lo, signed)}, {_num(hi, signed)}]"
    return text


def _claim(r: pd.Series) -> str:
    if isinstance(r.get("control"), str) and r["control"]:
        return f"control ({r['control']})"
    return "✓" if r.get("claim") is True or r.get("claim") == 1 else ""


def display_table(section: pd.DataFrame) -> pd.DataFrame:
    """Strings per row: pooled forget/retain on the subset and on all questions, deltas with paired
    intervals, every task as `acc [lo, hi] (delta)`, the split, and whether the row is a claim."""
    task_cols = task_columns(section)
    has_all = (
        section[["forget_acc_all", "retain_acc_all"]].notna().any().any()
        if "forget_acc_all" in section
        else False
    )
    rows = []
    for _, r in section.iterrows():
        g = r.get
        d = {
            "split": g("split", "all"), "method": r["method"], "run": r["run"], "point": r["point"],
            "params": params_text(r),
            "forget": with_ci(r["forget_acc"], g("forget_lo"), g("forget_hi")),
            "Δ forget": with_ci(r["delta_forget"], g("delta_forget_lo"), g("delta_forget_hi"), True),
            "retain": with_ci(r["retain_acc"], g("retain_lo"), g("retain_hi")),
            "Δ retain": with_ci(r["delta_retain"], g("delta_retain_lo"), g("delta_retain_hi"), True),
        }  # fmt: skip
        if has_all:
            d["forget all"] = with_ci(g("forget_acc_all"), g("forget_all_lo"), g("forget_all_hi"))
            d["Δ forget all"] = with_ci(
                g("delta_forget_all"), g("delta_forget_all_lo"), g("delta_forget_all_hi"), True
            )
            d["retain all"] = with_ci(g("retain_acc_all"), g("retain_all_lo"), g("retain_all_hi"))
            d["Δ retain all"] = with_ci(
                g("delta_retain_all"), g("delta_retain_all_lo"), g("delta_retain_all_hi"), True
            )
        d["retain mean"] = _num(r["retain_mean"])
        if _num(g("vs_control_forget")):
            d["forget vs control"] = with_ci(
                g("vs_control_forget"), g("vs_control_lo"), g("vs_control_hi"), True
            )
        for c in task_cols:
            if c.startswith("forget:") and len([t for t in task_cols if t.startswith("forget:")]) == 1:
                continue  # the pooled forget column already is this task
            delta = _num(r.get(f"delta:{c}"), True)
            cell = with_ci(r[c], g(f"lo:{c}"), g(f"hi:{c}"))
            d[f"{c.split(':')[0]}: {short_task(c)}"] = cell + (f" ({delta})" if delta else "")
        d["claim"] = _claim(r)
        d["Pareto"] = "★" if r["pareto"] else ""
        rows.append(d)
    return pd.DataFrame(rows)


def section_overview(points: pd.DataFrame) -> pd.DataFrame:
    """One line per section: what is being compared and how many runs it holds."""
    out = []
    for s, g in points.groupby("section"):
        first = g.iloc[0]
        tasks = [t.split("@")[0] + " n=" + t.split("#")[-1] for t in str(first["tasks"]).split(" | ") if t]
        out.append(
            {
                "section": s,
                "model": first["group"],
                "protocol": first["protocol"],
                "subset": first["subset"],
                "split": first.get("split", "all"),
                "questions": "; ".join(tasks),
                "runs": g["run"].nunique(),
                "rows": len(g),
            }  # fmt: skip
        )
    return pd.DataFrame(out)


def separation_reasons(points: pd.DataFrame) -> list[str]:
    """For sections of the same model, say which of protocol / subset / questions keeps them apart."""
    firsts = points.groupby("section").first()
    reasons = []
    for group, g in firsts.groupby("group"):
        secs = list(g.index)
        for i, a in enumerate(secs):
            for b in secs[i + 1 :]:
                diff = [
                    f"{k} ({g.at[a, k]} vs {g.at[b, k]})"
                    for k in ("protocol", "subset", "split")
                    if k in g.columns
                    if g.at[a, k] != g.at[b, k]
                ]
                if g.at[a, "tasks"] != g.at[b, "tasks"]:
                    diff.append("forget/retain question sets (different tasks or question counts)")
                reasons.append(f"{group}: sections {a} and {b} differ in " + ", ".join(diff))
    return reasons


def load_published() -> dict[str, Any]:
    return yaml.safe_load(resources.files("unlearn.report").joinpath("published.yaml").read_text())


def published_table(group: str, model: str) -> tuple[pd.DataFrame, str]:
    """Published reference numbers for a preset (or its model id); empty when none are on file."""
    for key, entry in load_published().items():
        if group == key or model == entry.get("model"):

            def fmt(v: Any) -> str:
                return "–".join(f"{x:.3f}" for x in v) if isinstance(v, list) else _num(v)

            rows = [
                {
                    "method": e["method"],
                    "setting": e["setting"],
                    "protocol": e["protocol"],
                    "subset": e["subset"],
                    "forget": fmt(e["forget"]),
                    "retain": fmt(e["retain"]),
                    "source": e["source"],
                }  # fmt: skip
                for e in entry["entries"]
            ]
            sb = entry.get("saebench_scores")
            note = entry.get("note", "")
            if sb:
                means = ", ".join(f"{k} {v:.3f}" for k, v in sb["mean_by_architecture"].items())
                note += f" {sb['note']} Means by architecture: {means}. Source: {sb['source']}."
            return pd.DataFrame(rows), note
    return pd.DataFrame(), ""


def scores_table(scores: pd.DataFrame) -> pd.DataFrame:
    """SAEBench scores as display strings (the section is the heading already)."""
    out = scores.drop(columns=["section", "group"]).copy()
    for c in ("score", "best_forget", "best_retain"):
        out[c] = [_num(v) for v in out[c]]
    return out


# ---------------------------------------------------------------- terminal


def rich_table(df: pd.DataFrame, title: str) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for c in df.columns:
        table.add_column(str(c), overflow="fold")
    for _, r in df.iterrows():
        table.add_row(
            *(str(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else "" for v in r)
        )
    return table


def print_console(console: Console, doc: Document) -> None:
    console.print(rich_table(doc.overview, "Sections (never compared with each other)"))
    for r in doc.reasons:
        console.print(f"  {r}", highlight=False)
    for s in doc.sections:
        console.print(rich_table(s.table, f"Section {s.number}: {s.title}"))
        if s.scores is not None and len(s.scores):
            table = rich_table(
                scores_table(s.scores), f"Section {s.number}: SAEBench unlearning score per sweep"
            )
            console.print(table)
    for title, _, table in doc.extras:
        console.print(rich_table(table, title))
    for model, table, _ in doc.published:
        console.print(
            rich_table(table.drop(columns=["source"]), f"Published numbers for {model} (see report)")
        )
    for n in doc.notes:
        console.print(f"[yellow]note:[/] {n}", highlight=False)


# ---------------------------------------------------------------- files


def md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_\n"

    def cell(v: Any) -> str:
        text = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


@dataclass
class Document:
    """Everything a report file shows, in order."""

    title: str
    header: str
    overview: pd.DataFrame
    reasons: list[str]
    sections: list[Section]
    published: list[tuple[str, pd.DataFrame, str]]  # (model, table, note)
    features: pd.DataFrame
    notes: list[str]
    extras: list[tuple[str, str, pd.DataFrame]] = field(default_factory=list)  # (title, intro, table)


def render_markdown(doc: Document) -> str:
    out = [
        f"# {doc.title}\n",
        doc.header + "\n",
        "## Sections\n",
        WHY_SECTIONS + "\n",
        md_table(doc.overview),
    ]
    out += [f"- {r}" for r in doc.reasons] + [""]
    for s in doc.sections:
        out += [f"## Section {s.number}: {s.title}\n", md_table(s.table)]
        if s.scores is not None and len(s.scores):
            intro = "**SAEBench unlearning score** per sweep (points with retain ≥ 0.99: 1 − min forget):\n"
            out += [intro, md_table(scores_table(s.scores))]
        out += [f"![{name}]({name})\n" for name in s.plots]
    for title, intro, table in doc.extras:
        out += [f"## {title}\n", intro + "\n", md_table(table)]
    for model, table, note in doc.published:
        out += [f"## Published numbers: {model}\n", note + "\n", md_table(table)]
    if not doc.features.empty:
        out += ["## Feature selections\n", md_table(doc.features)]
    if doc.notes:
        out += ["## Notes\n"] + [f"- {n}" for n in doc.notes] + [""]
    return "\n".join(out)


CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#eee}
img{max-width:100%;border:1px solid #ddd;margin:0.5em}.plots{display:flex;flex-wrap:wrap}.note{color:#8a5a00}"""


def html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>(none)</em></p>"
    return df.to_html(index=False, escape=True, na_rep="", border=0)


def render_html(doc: Document) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(doc.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(doc.title)}</h1><p>{e(doc.header)}</p><h2>Sections</h2><p>{e(WHY_SECTIONS)}</p>",
        html_table(doc.overview),
        "<ul>" + "".join(f"<li>{e(r)}</li>" for r in doc.reasons) + "</ul>",
    ]
    for s in doc.sections:
        out += [f"<h2>Section {s.number}: {e(s.title)}</h2>", html_table(s.table)]
        if s.scores is not None and len(s.scores):
            intro = (
                "<p><strong>SAEBench unlearning score</strong> per sweep (retain ≥ 0.99: 1 − min forget)</p>"
            )
            out += [intro, html_table(scores_table(s.scores))]
        out.append("<div class='plots'>")
        for name, png in s.plots.items():
            data = base64.b64encode(png).decode()
            out.append(f"<img alt='{e(name)}' src='data:image/png;base64,{data}'>")
        out.append("</div>")
    for title, intro, table in doc.extras:
        out += [f"<h2>{e(title)}</h2><p>{e(intro)}</p>", html_table(table)]
    for model, table, note in doc.published:
        out += [f"<h2>Published numbers: {e(model)}</h2><p>{e(note)}</p>", html_table(table)]
    if not doc.features.empty:
        out += ["<h2>Feature selections</h2>", html_table(doc.features)]
    if doc.notes:
        out += ["<h2>Notes</h2><ul>"] + [f"<li class='note'>{e(n)}</li>" for n in doc.notes] + ["</ul>"]
    return "\n".join(out + ["</body></html>\n"])
