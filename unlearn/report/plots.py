"""Report figures as PNG bytes: the forget/retain trade-off, per-subject side effects, sweep curves.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas (no pyplot, so no global state and
no display needed). PNGs are written without matplotlib's default `Software` text chunk, which carries
a URL, so the HTML report that inlines them holds no external address at all.
"""

from __future__ import annotations

import io

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

METHOD_STYLE = {  # method -> (colour, marker)
    "sae-clamp": ("tab:blue", "o"),
    "sae-zero": ("tab:gray", "v"),
    "sae-scale": ("tab:cyan", "s"),
    "rmu": ("tab:red", "D"),
    "base": ("black", "*"),
    "eval": ("black", "*"),
}


def short_task(col: str) -> str:
    """`retain:mmlu:high_school_geography` -> `high_school_geography` (table and axis labels)."""
    name = col.split(":", 1)[1] if ":" in col else col
    return name.split(":", 1)[1] if name.startswith(("mmlu:", "offline:")) else name


def task_columns(section: pd.DataFrame) -> list[str]:
    """Per-task accuracy columns with data, forget tasks first, then retain subjects, then the rest."""
    order = {"forget": 0, "retain": 1, "other": 2}
    cols = [c for c in section.columns if c.split(":")[0] in order and section[c].notna().any()]
    return sorted(cols, key=lambda c: (order[c.split(":")[0]], c))


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _err(g: pd.DataFrame, role: str):
    """Asymmetric error bars (2, n) from the `<role>_lo/hi` interval columns; None when there are none."""
    lo, hi = f"{role}_lo", f"{role}_hi"
    if lo not in g or g[lo].isna().all():
        return None
    acc = g[f"{role}_acc"].astype(float)
    return [
        (acc - g[lo].astype(float)).clip(lower=0).fillna(0),
        (g[hi].astype(float) - acc).clip(lower=0).fillna(0),
    ]


def tradeoff_plot(section: pd.DataFrame, title: str) -> bytes:
    """Forget vs retain accuracy of every point with 95% bootstrap intervals as error bars; the Pareto
    front joined, the unhooked model as a star."""
    fig = Figure(figsize=(6.5, 5), layout="constrained")
    ax = fig.add_subplot()
    for method, g in section.groupby("method"):
        colour, marker = METHOD_STYLE.get(str(method), ("tab:purple", "x"))
        is_base = method in ("base", "eval")
        xerr, yerr = _err(g, "forget"), _err(g, "retain")
        if xerr is not None or yerr is not None:
            ax.errorbar(g["forget_acc"], g["retain_acc"], xerr=xerr, yerr=yerr, fmt="none", ecolor=colour,
                        elinewidth=0.8, alpha=0.5, zorder=2)  # fmt: skip
        ax.scatter(
            g["forget_acc"], g["retain_acc"], c=colour, marker=marker, s=220 if is_base else 40,
            label="unhooked model" if is_base else str(method), zorder=3, alpha=0.9 if is_base else 0.7,
        )  # fmt: skip
    front = section[section["pareto"].astype(bool)].sort_values("forget_acc")
    if len(front):
        ax.plot(front["forget_acc"], front["retain_acc"], "-", c="tab:orange", lw=1.5, zorder=2)
        ax.scatter(front["forget_acc"], front["retain_acc"], s=120, facecolors="none",
                   edgecolors="tab:orange", lw=1.5, label="Pareto front", zorder=4)  # fmt: skip
    for _, r in front.iterrows():
        ax.annotate(str(r.get("label") or r["point"]), (r["forget_acc"], r["retain_acc"]), fontsize=6,
                    xytext=(4, -9), textcoords="offset points")  # fmt: skip
    split = section["split"].iloc[0] if "split" in section else "all"
    ax.set_xlabel(f"forget accuracy (lower is better; split {split}, bars: 95% CI)")
    ax.set_ylabel("retain accuracy (higher is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
    return _png(fig)


def side_effects_plot(section: pd.DataFrame, best: pd.DataFrame, title: str) -> bytes | None:
    """Accuracy per forget/retain/other task for the unhooked model and each method's best point."""
    task_cols = task_columns(section)
    base = section[section["method"].isin(["base", "eval"])].head(1)
    bars = pd.concat([base, best])
    if bars.empty or not task_cols:
        return None
    fig = Figure(figsize=(max(6.0, 1.2 * len(task_cols) + 2), 4.5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(bars)
    for k, (_, row) in enumerate(bars.iterrows()):
        colour = METHOD_STYLE.get(str(row["method"]), ("tab:purple", "x"))[0]
        label = "unhooked" if row["method"] in ("base", "eval") else f"{row['method']} {row['label']}"
        xs = [j + (k - (len(bars) - 1) / 2) * width for j in range(len(task_cols))]
        ys = [float(row[c]) if pd.notna(row[c]) else 0.0 for c in task_cols]
        ax.bar(xs, ys, width, label=label, color=colour, alpha=0.5 + 0.5 / (k + 1), edgecolor="white")
    ax.set_xticks(range(len(task_cols)))
    ax.set_xticklabels([f"{c.split(':')[0]}\n{short_task(c)}" for c in task_cols], fontsize=7, rotation=20)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def sweep_plot(section: pd.DataFrame, title: str) -> bytes | None:
    """Forget (solid) and retain (dashed) accuracy against the clamp scale and the number of features."""
    sweep = section[section["command"].eq("intervene") & section["method"].str.startswith("sae-")]
    sweep = sweep.dropna(subset=["scale", "n_features"])
    if sweep.empty:
        return None
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, x, other in ((axes[0], "scale", "n_features"), (axes[1], "n_features", "scale")):
        for key, g in sweep.groupby(["run", "mode", "retain_threshold", other], dropna=False):
            run, mode, thr, val = key
            g = g.sort_values(x)
            label = f"{mode} {other}={val:g}" + (f" thr={thr:g}" if pd.notna(thr) else "")
            line = ax.plot(g[x].astype(float), g["forget_acc"], "-o", ms=3, label=label)[0]
            ax.plot(g[x].astype(float), g["retain_acc"], "--", c=line.get_color(), ms=3)
        for _, b in section[section["method"].isin(["base", "eval"])].head(1).iterrows():
            ax.axhline(b["forget_acc"], c="black", lw=0.8, alpha=0.5)
        xs = sweep[x].astype(float)
        if (xs > 0).all() and xs.max() / xs.min() >= 8:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.set_xticks(sorted(xs.unique()))
        ax.set_xlabel("clamp scale" if x == "scale" else "number of features")
        ax.set_ylabel("accuracy (solid: forget, dashed: retain)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    return _png(fig)
