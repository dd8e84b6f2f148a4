"""Report sections for `screen-features` and `cross-topic` runs, appended to `unlearn report`'s files.

Screening (Farrell, Lau & Conmy, arXiv 2410.19278: one feature clamped at a time, then added greedily
under a retain budget) runs on the dev split, so its table and its plot (forget change vs retain change
per feature) appear only with `report --split dev` or `--split all`; the greedy set's single test-split
evaluation beside its matched random features and the same-size top-n rule, and the cross-topic table,
appear on the split they were run on. Kept apart from `report.py` so the main report stays unchanged.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from unlearn.results import is_complete, read_json, write_bytes

log = logging.getLogger(__name__)

SHOWN = {"test": ("test", "all"), "dev": ("dev",), "all": ("test", "dev", "all")}
"""Run splits shown for each `report --split` (as `unlearn.report.run.SPLITS`)."""


@dataclass
class Part:
    title: str
    intro: str
    table: pd.DataFrame
    plots: dict[str, bytes] = field(default_factory=dict)


def _ci(v, ci=None, signed=True) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    s = f"{v:+.3f}" if signed else f"{v:.3f}"
    ok = isinstance(ci, list | tuple) and len(ci) == 2 and not any(c is None or pd.isna(c) for c in ci)
    return s + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ok else "")


def _iv(d) -> str:
    return _ci(d[0], d[1:]) if isinstance(d, list) and d else ""


def screen_plot(screen: dict, title: str) -> bytes:
    """Forget change vs retain change per screened feature (paired 95% intervals as error bars)."""
    from matplotlib.figure import Figure

    from unlearn.report.plots import _png

    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for r in screen["features"]:
        x, y = r.get("d_retain"), r.get("d_forget")
        if x is None or y is None:
            continue
        xe = [[x - r["d_retain_ci"][0]], [r["d_retain_ci"][1] - x]] if r.get("d_retain_ci") else None
        ye = [[y - r["d_forget_ci"][0]], [r["d_forget_ci"][1] - y]] if r.get("d_forget_ci") else None
        ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", color="tab:blue", ecolor="lightsteelblue", ms=4)
        ax.annotate(str(r["feature"]), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="gray", lw=0.5)
    ax.axvline(0, color="gray", lw=0.5)
    ax.set_xlabel("Δ retain accuracy (one feature clamped)")
    ax.set_ylabel("Δ forget accuracy")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def screen_parts(run_dir: Path, split: str) -> list[Part]:
    """The screening table and plot (dev) and the greedy set's test table, as `split` allows."""
    parts: list[Part] = []
    cfg = read_json(run_dir / "config.json")
    name = f"screen-features/{run_dir.name}"
    screen = read_json(run_dir / "screen.json")
    if screen.get("split") in SHOWN[split]:
        from unlearn.clamp.screen import screen_frame

        frame = screen_frame(screen)
        rows = pd.DataFrame({
            "#": frame["order"], "feature": frame["feature"], "selection rank": frame["rank"],
            "forget": frame["forget_acc"].map(lambda v: _ci(v, signed=False)),
            "Δ forget [95% CI]": [_ci(v, [lo, hi]) for v, lo, hi in zip(frame["d_forget"], frame["d_forget_lo"], frame["d_forget_hi"], strict=True)],
            "retain": frame["retain_acc"].map(lambda v: _ci(v, signed=False)),
            "Δ retain [95% CI]": [_ci(v, [lo, hi]) for v, lo, hi in zip(frame["d_retain"], frame["d_retain_lo"], frame["d_retain_hi"], strict=True)],
            "retain errors": frame["retain_errors"], "top tokens": frame["top_tokens"],
        })  # fmt: skip
        intro = (f"{cfg.get('preset') or cfg.get('model')} · split {screen['split']} · each feature clamped alone "
                 f"({screen['mode']} {screen['scale']:g}, unit {screen['clamp_unit']}) at {screen['hook']}; Δ paired "
                 f"vs unhooked (forget {_ci(screen['baseline'].get('forget_acc'), signed=False)}, retain "
                 f"{_ci(screen['baseline'].get('retain_acc'), signed=False)}, {screen['n_known_retain']} known retain "
                 "questions). Ordered by forget drop.")  # fmt: skip
        png = {
            f"screen_{run_dir.name}.png": screen_plot(
                screen, f"{name}: one feature at a time ({screen['split']})"
            )
        }
        parts.append(Part(f"Screening: {name}", intro, rows, png))
    if (run_dir / "test.json").exists():
        test = read_json(run_dir / "test.json")
        if test.get("split") in SHOWN[split]:
            from unlearn.clamp.screen import test_frame

            greedy = read_json(run_dir / "greedy.json")
            t = test_frame(test)
            rows = pd.DataFrame({
                "point": t["point"], "n features": t["n_features"],
                "forget [95% CI]": [_ci(v, ci, signed=False) for v, ci in zip(t["forget_acc"], t.get("forget_ci", [None] * len(t)), strict=True)],
                "Δ forget [95% CI]": t["d_forget"].map(_iv) if "d_forget" in t else "",
                "retain [95% CI]": [_ci(v, ci, signed=False) for v, ci in zip(t["retain_acc"], t.get("retain_ci", [None] * len(t)), strict=True)],
                "Δ retain [95% CI]": t["d_retain"].map(_iv) if "d_retain" in t else "",
            })  # fmt: skip
            vs = test["points"]["greedy"].get("vs_control", {}).get("forget")
            claim = ""
            if vs:
                claim = f" Greedy − control, forget: {_iv(vs)} (paired){' ✓ below its control' if vs[2] < 0 else ''}."
            intro = (f"Greedy set chosen on {greedy['split']} with ≤ {greedy['allowed_errors']:g} retain errors "
                     f"(budget {greedy['retain_budget']:g}), evaluated once on {test['split']} beside the same number "
                     f"of frequency-matched random features and the top-n rule of the same size.{claim}")  # fmt: skip
            parts.append(Part(f"Greedy set: {name}", intro, rows))
    return parts


def cross_parts(run_dir: Path, split: str) -> list[Part]:
    cross = read_json(run_dir / "cross.json")
    if cross.get("split") not in SHOWN[split]:
        return []
    frame = pd.DataFrame(cross["table"])
    rows = []
    for state, g in frame.groupby("clamped", sort=False):
        row = {"clamped": state}
        for _, r in g.iterrows():
            cell = _ci(r["acc"], [r["acc_lo"], r["acc_hi"]], signed=False)
            if r.get("delta") is not None and not pd.isna(r.get("delta")):
                cell += f" (Δ {_ci(r['delta'], [r['delta_lo'], r['delta_hi']])})"
            row[f"{r['questions']} questions"] = cell
        rows.append(row)
    intro = (f"Split {cross['split']} · top {cross['n_features']} features of each topic clamped to "
             f"{cross['scale']:g} ({cross['clamp_unit']}), alone and together; each column one topic's questions "
             "(known subset), Δ paired vs unhooked. Off-diagonal cells are the cross-topic effect.")  # fmt: skip
    return [Part(f"Cross-topic: cross-topic/{run_dir.name}", intro, pd.DataFrame(rows))]


def collect_parts(results: Path, split: str) -> list[Part]:
    parts: list[Part] = []
    for command, reader, need in (("screen-features", screen_parts, "screen.json"),
                                  ("cross-topic", cross_parts, "cross.json")):  # fmt: skip
        for run_dir in sorted(p for p in (results / command).glob("*") if p.is_dir()):
            if not is_complete(run_dir) or not (run_dir / need).exists():
                continue
            try:
                parts += reader(run_dir, split)
            except (KeyError, TypeError, ValueError, OSError) as e:
                log.warning("skipped unreadable run %s: %s", run_dir, e)
    return parts


def add_screen_sections(out: Path, results: Path, formats, split: str) -> None:
    """Append the screening, greedy and cross-topic sections to `report.md` / `report.html` in `out`."""
    from unlearn.report.render import html_table, md_table

    parts = collect_parts(Path(results), split)
    if not parts:
        return
    if {"md", "png"} & set(formats):
        for p in parts:
            for name, png in p.plots.items():
                write_bytes(out / name, png)
    if "md" in formats and (out / "report.md").exists():
        md = [(out / "report.md").read_text()]
        for p in parts:
            md += [f"## {p.title}\n", p.intro + "\n", md_table(p.table)] + [f"![{n}]({n})\n" for n in p.plots]
        write_bytes(out / "report.md", "\n".join(md).encode())
    if "html" in formats and (out / "report.html").exists():
        import base64

        doc = (out / "report.html").read_text()
        body = []
        for p in parts:
            body += [f"<h2>{html.escape(p.title)}</h2><p>{html.escape(p.intro)}</p>", html_table(p.table)]
            body += [f"<img alt='{html.escape(n)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                     for n, png in p.plots.items()]  # fmt: skip
        head, sep, tail = doc.rpartition("</body>")
        write_bytes(
            out / "report.html", (head + "\n".join(body) + "\n" + sep + tail if sep else doc).encode()
        )
