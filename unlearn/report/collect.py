"""Reading `results/` for `unlearn report`: one row per evaluated model state, split into sections.

Strict about the keys a row needs, tolerant of optional ones: a run folder that cannot be read is
skipped with a warning naming it and the missing key, so one crashed run never hides the others.
Rows share a *section* only when model, protocol, question subset and forget/retain question sets
(task, protocol, subset and question count per task) and the split (dev / test / all) agree; deltas
are taken against the row's own unhooked model (the sweep's `baseline.json`, RMU's `before`, or a plain
`unlearn eval` of the section). Where both states left per-question tables, deltas carry paired
bootstrap intervals (`unlearn.stats.paired_deltas`), and a point counts as a *claim* only when its
forget drop's interval excludes 0 and, where its run holds a control point (random features or
directions at the same size), its forget accuracy is below the control's with a paired interval below 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from unlearn.clamp.shard import shard_state
from unlearn.errors import UnlearnError
from unlearn.results import COMPLETE_FILE, EvalBlock, TaskScore, is_complete, read_json

log = logging.getLogger(__name__)

COMMANDS = ("eval", "select-features", "intervene", "rmu-baseline")
METHODS = ("base", "sae-clamp", "sae-zero", "sae-scale", "rmu", "eval")
BASELINE_METHODS = ("base", "eval")

PARAM_COLUMNS = (
    "mode", "gate", "scale", "n_features", "retain_threshold", "rank_by", "hook", "sae",
    "layer", "steering_coeff", "alpha", "lr", "n_batches", "source",
)  # fmt: skip
META_COLUMNS = (
    "section",
    "group",
    "preset",
    "model",
    "method",
    "command",
    "run",
    "point",
    "protocol",
    "subset",
    "split",
)
ACC_COLUMNS = ("forget_acc", "retain_acc", "retain_mean", "delta_forget", "delta_retain", "delta_retain_mean")
CI_COLUMNS = (
    "forget_lo", "forget_hi", "retain_lo", "retain_hi",
    "forget_acc_all", "forget_all_lo", "forget_all_hi", "retain_acc_all", "retain_all_lo", "retain_all_hi",
    "delta_forget_lo", "delta_forget_hi", "delta_retain_lo", "delta_retain_hi",
    "delta_forget_all", "delta_forget_all_lo", "delta_forget_all_hi",
    "delta_retain_all", "delta_retain_all_lo", "delta_retain_all_hi",
    "vs_control_forget", "vs_control_lo", "vs_control_hi",
)  # fmt: skip
"""Interval bounds (95% bootstrap) and absolute (all-question) accuracies; NaN where a run has none."""
OPTIONAL_SCORE_KEYS = ("split", "ci", "acc_all", "n_all", "ci_all", "acc_mi")
OPTIONAL_BLOCK_KEYS = ("split", "forget_ci", "retain_ci", "forget_acc_all", "forget_ci_all",
                       "retain_acc_all", "retain_ci_all")  # fmt: skip


class CorruptRun(Exception):
    """A run folder (or one point file) that cannot be read; the report skips it and says why."""


@dataclass
class Collection:
    """What `collect` found: one row per evaluated model state, feature selections, notes for the reader."""

    points: pd.DataFrame
    features: pd.DataFrame
    notes: list[str] = field(default_factory=list)  # skipped folders, partial runs, missing commands


# ---------------------------------------------------------------- reading one run


def _require(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise CorruptRun(f"{where}: missing required key {key!r}")
    return d[key]


def _read(path: Path) -> Any:
    if not path.exists():
        raise CorruptRun(f"{path.name} is missing")
    try:
        return read_json(path)
    except (OSError, ValueError) as e:
        raise CorruptRun(f"{path.name} is not valid JSON ({e})") from e


def _accuracy(value: Any, where: str) -> float:
    """An accuracy is a finite number in [0, 1]; anything else is a damaged file, not a result."""
    acc = float(value)
    if not (math.isfinite(acc) and 0.0 <= acc <= 1.0):
        raise CorruptRun(f"{where}: accuracy {value!r} is outside [0, 1]")
    return acc


def parse_block(d: Any, where: str) -> EvalBlock:
    """An EvalBlock from JSON: strict on the keys the report needs, tolerant of extra or optional ones."""
    scores = []
    for i, s in enumerate(_require(d, "scores", where)):
        w = f"{where} scores[{i}]"
        if isinstance(s, dict) and s.get("acc") is None and s.get("n") == 0:
            continue  # an empty known subset: nothing was scored
        try:
            acc = _accuracy(_require(s, "acc", w), w)
            n = int(_require(s, "n", w))
        except (TypeError, ValueError) as e:
            raise CorruptRun(f"{w}: acc/n must be numbers") from e
        scores.append(
            TaskScore(
                task=str(_require(s, "task", w)),
                role=str(_require(s, "role", w)),
                protocol=str(s.get("protocol", d.get("protocol", "?"))),
                subset=str(s.get("subset", d.get("subset", "?"))),
                n=n,
                acc=acc,
                acc_norm=s.get("acc_norm"),
                **{k: s.get(k) for k in OPTIONAL_SCORE_KEYS},
            )
        )
    forget, retain = d.get("forget_acc"), d.get("retain_acc")
    return EvalBlock(
        protocol=str(_require(d, "protocol", where)),
        subset=str(_require(d, "subset", where)),
        scores=scores,
        forget_acc=_accuracy(forget, f"{where} forget_acc")
        if forget is not None
        else EvalBlock.pooled(scores, "forget"),
        retain_acc=_accuracy(retain, f"{where} retain_acc")
        if retain is not None
        else EvalBlock.pooled(scores, "retain"),
        **{k: d.get(k) for k in OPTIONAL_BLOCK_KEYS},
    )


def tasks_key(block: EvalBlock) -> str:
    """The forget/retain question sets of a block: blocks may share a column only when these agree."""
    parts = [
        f"{s.role}:{s.task}@{s.protocol}/{s.subset}#{s.n}"
        for s in block.scores
        if s.role in ("forget", "retain")
    ]
    return " | ".join(sorted(parts))


def _bounds(ci: Any) -> tuple[float, float]:
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(v, int | float) for v in ci):
        return float(ci[0]), float(ci[1])
    return math.nan, math.nan


def _row(
    cfg: dict,
    method: str,
    run: str,
    point: str,
    block: EvalBlock,
    questions: Path | None = None,
    **params: Any,
) -> dict[str, Any]:
    retain = [s.acc for s in block.scores if s.role == "retain"]
    row: dict[str, Any] = {
        "preset": cfg.get("preset"),
        "model": cfg["model"],
        "group": cfg.get("preset") or cfg["model"],
        "method": method,
        "command": run.split("/")[0],
        "run": run,
        "point": point,
        "protocol": block.protocol,
        "subset": block.subset,
        "split": block.split or "all",  # results without the field evaluated every question
        "tasks": tasks_key(block),
        "forget_acc": block.forget_acc,
        "retain_acc": block.retain_acc,
        "retain_mean": sum(retain) / len(retain) if retain else None,
        "hook": cfg.get("hook"),
        "sae": cfg.get("sae"),
        "questions_file": str(questions) if questions is not None and questions.exists() else None,
    }
    for role in ("forget", "retain"):
        row[f"{role}_lo"], row[f"{role}_hi"] = _bounds(getattr(block, f"{role}_ci"))
        acc_all = getattr(block, f"{role}_acc_all")
        row[f"{role}_acc_all"] = float(acc_all) if acc_all is not None else math.nan
        row[f"{role}_all_lo"], row[f"{role}_all_hi"] = _bounds(getattr(block, f"{role}_ci_all"))
    row.update(params)
    for s in block.scores:
        row[f"{s.role}:{s.task}"] = s.acc
        row[f"lo:{s.role}:{s.task}"], row[f"hi:{s.role}:{s.task}"] = _bounds(s.ci)
    return row


def _config(run_dir: Path, where: str) -> dict:
    cfg = _read(run_dir / "config.json")
    _require(cfg, "model", f"{where}/config.json")
    return cfg


def _read_intervene(run_dir: Path, run: str, notes: list[str]) -> list[dict]:
    cfg = _config(run_dir, run)
    rows = []
    base_id = None
    if (run_dir / "baseline.json").exists():
        base_block = parse_block(_read(run_dir / "baseline.json"), run)
        rows.append(_row(cfg, "base", run, "baseline", base_block, run_dir / "questions" / "baseline.csv"))
        base_id = f"{run}#baseline"
    else:
        notes.append(f"{run}: no baseline.json, so no deltas vs the unhooked model for its points")
    point_files = sorted((run_dir / "points").glob("*.json"))
    if not point_files:
        if base_id is None:
            raise CorruptRun("neither baseline.json nor points/*.json")
        notes.append(f"{run}: no points/*.json yet (partial run); only its baseline is shown")
    for f in point_files:
        where = f"{run}/points/{f.name}"
        try:
            p = _read(f)
            block = parse_block(_require(p, "metrics", where), where)
        except CorruptRun as e:
            notes.append(f"skipped point {where}: {e}")
            log.warning("skipped point %s: %s", where, e)
            continue
        mode = str(p.get("mode", cfg.get("mode", "clamp")))
        rows.append(
            _row(
                cfg,
                f"sae-{mode}",
                run,
                f.stem,
                block,
                run_dir / "questions" / f"{f.stem}.csv",
                control=p.get("control"),
                mode=mode,
                gate=(p.get("gate") or {}).get("kind"),
                scale=p.get("scale"),
                n_features=p.get("n_features"),
                retain_threshold=p.get("retain_threshold"),
                rank_by=p.get("rank_by"),
                layer=cfg.get("layer"),
                source=cfg.get("features"),
                ref=base_id,
            )  # fmt: skip
        )
    return rows


def _rmu_params(cfg: dict) -> dict[str, Any]:
    return {k: cfg.get(k) for k in ("layer", "steering_coeff", "alpha", "lr", "n_batches")}


def _read_rmu(run_dir: Path, run: str) -> list[dict]:
    cfg = _config(run_dir, run)
    m = _read(run_dir / "metrics.json")
    before = parse_block(_require(m, "before", f"{run}/metrics.json"), f"{run}/metrics.json before")
    after = parse_block(_require(m, "after", f"{run}/metrics.json"), f"{run}/metrics.json after")
    return [
        _row(cfg, "base", run, "before", before, run_dir / "questions_before.csv", **_rmu_params(cfg)),
        _row(
            cfg,
            "rmu",
            run,
            "after",
            after,
            run_dir / "questions_after.csv",
            ref=f"{run}#before",
            **_rmu_params(cfg),
        ),  # fmt: skip
    ]


def _read_eval(run_dir: Path, run: str, results_dir: Path) -> list[dict]:
    cfg = _config(run_dir, run)
    block = parse_block(_read(run_dir / "metrics.json"), f"{run}/metrics.json")
    if not cfg.get("rmu"):
        return [_row(cfg, "eval", run, "eval", block, run_dir / "questions.csv")]
    rmu_path = Path(cfg["rmu"])
    params: dict[str, Any] = {"source": str(rmu_path)}
    from unlearn.rmu.weights import run_candidates

    for cand in run_candidates(rmu_path, results_dir):
        cand = cand.parent if cand.suffix == ".safetensors" else cand  # --rmu may name the weights file
        if (cand / "config.json").exists():
            try:
                params |= _rmu_params(read_json(cand / "config.json"))
            except ValueError:
                pass
            break
    return [_row(cfg, "rmu", run, "eval", block, run_dir / "questions.csv", **params)]


def _read_features(run_dir: Path, run: str) -> list[dict]:
    cfg = _config(run_dir, run)
    data = _read(run_dir / "features.json")
    topics = _require(data, "topics", f"{run}/features.json")
    rows = []
    for topic, t in topics.items():
        feats = _require(t, "features", f"{run}/features.json topics.{topic}")
        stats = {s.get("feature"): s for s in t.get("stats", []) if isinstance(s, dict)}
        top = []
        for fid in feats[:5]:
            s = stats.get(fid, {})
            tokens = ", ".join(map(str, s.get("top_tokens", [])[:3]))
            fr, rr = s.get("forget_freq"), s.get("retain_freq")
            freq = f" {fr:.3f}/{rr:.4f}" if isinstance(fr, float) and isinstance(rr, float) else ""
            auc = s.get("auroc")
            auc_text = f" AUROC {auc:.3f}" if isinstance(auc, float) else ""
            top.append(f"{fid}{freq}{auc_text}" + (f" [{tokens}]" if tokens else ""))
        auroc = t.get("auroc", data.get("auroc"))
        rows.append(
            {
                "group": cfg.get("preset") or cfg["model"],
                "run": run,
                "sae": cfg.get("sae"),
                "hook": cfg.get("hook"),
                "topic": topic,
                "n_features": len(feats),
                "auroc": _auroc_text(auroc),
                "top": "; ".join(top),
            }  # fmt: skip
        )
    return rows


def _auroc_text(auroc: Any) -> str:
    """features.json `auroc`: one number (forget vs retain separability of the selection) or a dict of
    named ones; shown as written, empty when the selection has none."""
    if isinstance(auroc, int | float):
        return f"{float(auroc):.3f}"
    if isinstance(auroc, dict):
        return ", ".join(f"{k} {v:.3f}" for k, v in auroc.items() if isinstance(v, int | float))
    return ""


# ---------------------------------------------------------------- the whole tree

_MISSING_HINT = {
    "eval": "`unlearn eval` (the unhooked model, or `--rmu` for an RMU model on the known subset)",
    "intervene": "`unlearn intervene` (the SAE clamping sweep)",
    "rmu-baseline": "`unlearn rmu-baseline` (the RMU comparison)",
    "select-features": "`unlearn select-features` (which features the sweep clamps)",
}


def collect(results_dir: Path) -> Collection:
    """Read every run under `results_dir`; corrupt folders are skipped with a note naming them."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UnlearnError(
            f"no results folder at {results_dir}: run `unlearn eval`, `unlearn intervene` or "
            "`unlearn rmu-baseline` first, or pass --results DIR (or set $UNLEARN_RESULTS)"
        )
    rows: list[dict] = []
    features: list[dict] = []
    notes: list[str] = []
    for command in COMMANDS:
        run_dirs = sorted(p for p in (results_dir / command).glob("*") if p.is_dir())
        if not run_dirs:
            notes.append(f"no {command} runs in {results_dir}: run {_MISSING_HINT[command]}")
        for run_dir in run_dirs:
            run = f"{command}/{run_dir.name}"
            shards = shard_state(run_dir) if command == "intervene" else None
            if shards is not None and not shards.complete:  # `intervene --shard I/N`: every shard, or none
                notes.append(f"skipped incomplete sharded run {run_dir}: {shards.describe()}")
                log.warning("skipped incomplete sharded run %s: %s", run_dir, shards.describe())
                continue
            if (run_dir / "FAILED").exists():  # rmu-baseline (and others) leave this when a run crashed
                reason = (run_dir / "FAILED").read_text(errors="replace").strip()[:200]
                notes.append(f"skipped failed run {run_dir}: {reason}")
                log.warning("skipped failed run %s: %s", run_dir, reason)
                continue
            if shards is None and not is_complete(
                run_dir
            ):  # killed, or still running: never read as a result
                notes.append(
                    f"skipped unfinished run {run_dir} (no {COMPLETE_FILE}: killed or still running)"
                )
                continue
            if command == "rmu-baseline" and not (run_dir / "metrics.json").exists():
                notes.append(f"{run}: no metrics.json (trained with --no-eval, or still running); "
                             f"score it with `unlearn eval --rmu {run_dir}`")  # fmt: skip
                continue
            try:
                if command == "eval":
                    rows += _read_eval(run_dir, run, results_dir)
                elif command == "intervene":
                    rows += _read_intervene(run_dir, run, notes)
                elif command == "rmu-baseline":
                    rows += _read_rmu(run_dir, run)
                else:
                    features += _read_features(run_dir, run)
            except (CorruptRun, TypeError, ValueError, AttributeError) as e:
                notes.append(f"skipped corrupt run folder {run_dir}: {e}")
                log.warning("skipped corrupt run folder %s: %s", run_dir, e)
    if not rows:
        raise UnlearnError(
            f"nothing to report in {results_dir}: no readable eval, intervene or rmu-baseline run.\n"
            + "\n".join(f"- {n}" for n in notes)
        )
    points = pd.DataFrame(rows)
    for col in (*PARAM_COLUMNS, "ref", "control"):
        if col not in points:
            points[col] = None
    _assign_sections(points)
    _add_deltas(points, notes)
    from unlearn.report.claims import add_paired_intervals

    add_paired_intervals(points, notes)
    points["pareto"] = False
    for _, idx in points.groupby("section").groups.items():
        points.loc[pareto_mask(points.loc[idx]).pipe(lambda m: m[m].index), "pareto"] = True
    return Collection(points=_order_columns(points), features=pd.DataFrame(features), notes=notes)


def collect_runs(results_dir: Path) -> pd.DataFrame:
    """One row per evaluated model state (see module docstring); `df.attrs["notes"]` holds the warnings."""
    c = collect(results_dir)
    c.points.attrs["notes"] = c.notes
    return c.points


def _assign_sections(df: pd.DataFrame) -> None:
    keys = ["group", "protocol", "subset", "split", "tasks"]
    sizes = df.groupby(keys).size().rename("rows").reset_index()  # the biggest comparison of a model first
    order = sizes.assign(neg=-sizes["rows"]).sort_values(["group", "neg", *keys[1:]])
    ids = {tuple(r): i + 1 for i, r in enumerate(order[keys].itertuples(index=False))}
    df["section"] = [ids[tuple(r)] for r in df[keys].itertuples(index=False)]


def _add_deltas(df: pd.DataFrame, notes: list[str]) -> None:
    """Deltas vs the row's own unhooked model: the sweep's baseline, RMU's `before`, or a plain eval run."""
    df["row_id"] = df["run"] + "#" + df["point"]
    by_id = df.set_index("row_id")
    # RMU models evaluated by `unlearn eval --rmu` compare with the newest plain eval in their section
    for i in df.index[(df["command"] == "eval") & (df["method"] == "rmu")]:
        same = df[(df["section"] == df.at[i, "section"]) & (df["method"] == "eval")]
        if len(same):
            df.at[i, "ref"] = same["row_id"].iloc[-1]
        else:
            run = df.at[i, "run"]
            notes.append(
                f"{run}: no plain `unlearn eval` run with the same protocol and questions: no deltas"
            )
    task_cols = [c for c in df.columns if c.split(":")[0] in ("forget", "retain", "other")]
    for col in ("delta_forget", "delta_retain", "delta_retain_mean", *(f"delta:{c}" for c in task_cols)):
        df[col] = math.nan
    for i in df.index:
        ref = df.at[i, "row_id"] if df.at[i, "method"] in BASELINE_METHODS else df.at[i, "ref"]
        if not isinstance(ref, str) or ref not in by_id.index:
            continue
        base = by_id.loc[ref]
        if base["section"] != df.at[i, "section"]:
            notes.append(f"{df.at[i, 'row_id']}: its baseline {ref} used other questions or another protocol;"
                         " no deltas shown")  # fmt: skip
            continue
        pairs = [
            ("delta_forget", "forget_acc"),
            ("delta_retain", "retain_acc"),
            ("delta_retain_mean", "retain_mean"),
        ]
        for col, src in [*pairs, *((f"delta:{c}", c) for c in task_cols)]:
            df.at[i, col] = pd.to_numeric(df.at[i, src]) - pd.to_numeric(base[src])


def _order_columns(df: pd.DataFrame) -> pd.DataFrame:
    task_cols = sorted(c for c in df.columns if c.split(":")[0] in ("forget", "retain", "other"))
    first = [*META_COLUMNS, *PARAM_COLUMNS, *ACC_COLUMNS, "pareto"]
    first += list(CI_COLUMNS) + ["claim", "control"]
    rest = [c for c in df.columns if c not in first and c not in task_cols and not c.startswith("delta:")]
    cols = first + task_cols + sorted(c for c in df.columns if c.startswith("delta:")) + rest
    out = df[cols].sort_values(["section", "method", "run", "point"], kind="stable").reset_index(drop=True)
    return out.astype({c: float for c in (*ACC_COLUMNS, *CI_COLUMNS)})


# ---------------------------------------------------------------- analysis


def pareto_mask(df: pd.DataFrame) -> pd.Series:
    """Unlearning points (not baselines) that no other point beats on both lower forget and higher retain."""
    cand = df[~df["method"].isin(BASELINE_METHODS) & df["forget_acc"].notna() & df["retain_acc"].notna()]
    f, r = cand["forget_acc"].astype(float), cand["retain_acc"].astype(float)
    mask = pd.Series(False, index=df.index)
    for i in cand.index:
        dominated = ((f <= f[i]) & (r >= r[i]) & ((f < f[i]) | (r > r[i]))).any()
        mask[i] = not dominated
    return mask
