"""`unlearn screen-features`: the paper's own procedure - screen features one at a time, then add them
greedily under a retain budget.

Farrell, Lau & Conmy (arXiv 2410.19278, §4-5) did not stop at the frequency rule: on gemma-2b-it each
candidate feature was first clamped *alone* and its effect on forget and retain accuracy measured, then
features were added one by one in that order, each kept only while retain (MMLU) accuracy stayed at its
unhooked value (or within a small number of errors). This module does both on the **dev** split:

- **Screening**: for each of the top-K features of a selection, the clamp of `intervene` (same modes and
  clamp units, the same `feature_edit` context manager) with that feature alone, evaluated by the shared
  `EvalSuite`; per feature: forget and retain accuracy with 95% bootstrap intervals, their paired changes
  vs the unhooked model (`unlearn.stats.paired_deltas`), the retain errors it causes, its edit size and
  its top contexts from the selection. The screening order is by forget change (largest drop first; ties
  by the smaller retain drop, then by selection rank).
- **Greedy accumulation** (`--greedy`): add features in screening order; a feature is kept only if the
  set with it makes at most `--retain-budget` retain errors on dev (an integer: known retain questions
  lost vs the unhooked model; a number below 1: that fraction of the known retain questions); stop at
  `--max-features` or when the candidates run out. The chosen set is saved as `features.json` in
  select-features' format (so `unlearn intervene --features <this run>` clamps it) and evaluated once on
  the **test** split beside the same number of frequency-matched random features (the selection's
  controls, `unlearn.clamp.controls`) and beside the top-n rule of the same size.

Retain errors are counted on the questions the unhooked model knows (all questions without a known
subset): Σ max(before − after, 0) of the per-question outcome, i.e. the number of known answers lost (a
fraction of a question under the 24-order letter protocol).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from unlearn.checks import check_model_path, finite_float, positive_int
from unlearn.clamp.controls import EditStats, feature_info
from unlearn.clamp.intervene import CLAMP_UNITS, check_mode, feature_edit, resolve_targets
from unlearn.errors import UnlearnError
from unlearn.eval.hook_cache import hook_layer_cache, layer_store
from unlearn.eval.suite import EvalSuite, Reuse
from unlearn.options import EVAL_FLAGS, EvalFlags, Flag, RunFlags, command
from unlearn.results import EvalBlock, check_new_run, open_run, read_json, write_json, write_table
from unlearn.setup import Setup, setup_of
from unlearn.stats import _truthy, outcome_column, paired_deltas

log = logging.getLogger(__name__)

COMMAND = "screen-features"
DEFAULT_TOP_K = 20


# --- the pure parts: retain errors, budgets, ordering, greedy ------------------------------------------


def retain_errors(point_q: pd.DataFrame, base_q: pd.DataFrame) -> float:
    """Known retain answers lost vs the unhooked model: Σ max(before − after, 0) over the retain questions
    the unhooked model knows (every retain question when there is no known subset)."""
    col_p, col_b = outcome_column(point_q), outcome_column(base_q)
    keep = ["task", "index", col_b] + (["known"] if "known" in base_q.columns else [])
    merged = point_q.loc[point_q["role"] == "retain", ["task", "index", col_p]].merge(
        base_q.loc[base_q["role"] == "retain", keep], on=["task", "index"], suffixes=("_p", "_b"),
        validate="one_to_one",
    )  # fmt: skip
    after = merged[col_p + "_p" if col_p == col_b else col_p].astype(float).to_numpy()
    before = merged[col_b + "_b" if col_p == col_b else col_b].astype(float).to_numpy()
    if "known" in merged and merged["known"].notna().any():
        mask = _truthy(merged["known"])
        after, before = after[mask], before[mask]
    return float(np.clip(before - after, 0, None).sum())


def n_known_retain(base_q: pd.DataFrame) -> int:
    """Retain questions the budget is counted on (the known ones, else all)."""
    retain = base_q[base_q["role"] == "retain"]
    if "known" in retain and retain["known"].notna().any():
        return int(_truthy(retain["known"]).sum())
    return len(retain)


def allowed_errors(budget: float, n_retain: int) -> float:
    """`--retain-budget` as a number of errors: an integer (0, 1, 2, ...) is a count; a number in (0, 1)
    is that fraction of the `n_retain` known retain questions."""
    budget = finite_float(budget, "--retain-budget")
    if budget < 0:
        raise UnlearnError(f"--retain-budget must be ≥ 0 (errors, or a fraction < 1), got {budget:g}.")
    if 0 < budget < 1:
        return budget * n_retain
    if budget != int(budget):
        raise UnlearnError(
            f"--retain-budget {budget:g}: pass a whole number of errors (0, 1, 2) or a fraction below 1."
        )
    return float(budget)


def screening_order(rows: Sequence[dict]) -> list[int]:
    """Feature ids, largest forget drop first; ties by the smaller retain drop, then by selection rank.
    A feature whose forget change could not be measured (nothing known) goes last."""

    def key(r: dict):
        d_f = r.get("d_forget")
        d_r = r.get("d_retain")
        return (math.inf if d_f is None else d_f, -(d_r if d_r is not None else -math.inf), r["rank"])

    return [r["feature"] for r in sorted(rows, key=key)]


class Trial(NamedTuple):
    """One evaluated feature set on dev."""

    forget_acc: float | None
    retain_acc: float | None
    retain_errors: float


def greedy_select(
    order: Sequence[int], evaluate: Callable[[list[int]], Trial], allowed: float, max_features: int
) -> tuple[list[int], list[dict]]:
    """Add features in `order`; keep one only if `evaluate(chosen + [it])` makes at most `allowed` retain
    errors; stop after `max_features` kept or when `order` runs out. Returns the kept set and one record
    per tried feature (`accepted`, the trial's accuracies and errors)."""
    chosen: list[int] = []
    steps: list[dict] = []
    for f in order:
        if len(chosen) >= max_features:
            break
        trial = evaluate([*chosen, f])
        ok = trial.retain_errors <= allowed + 1e-9
        steps.append({"feature": f, "accepted": ok, "set_size": len(chosen) + ok, **trial._asdict()})
        if ok:
            chosen.append(f)
    return chosen, steps


# --- the command ---------------------------------------------------------------------------------------


@dataclass
class ScreenConfig(EvalFlags, RunFlags):
    features: str | None = None
    """select-features run folder or its features.json (default: the latest run); comma list: topics merged."""
    topic: str | None = None
    """Topic of the selection (default: its first)."""
    feature_ids: list[int] | None = None
    """Explicit candidate ids, ranked, instead of a selection (comma list, e.g. 12,7,301)."""
    sae: str | None = None
    """SAE instead of the selection's."""
    hook: str | None = None
    """Hook point instead of the selection's."""
    top_k: int | None = None
    """Candidates screened: the selection's top K (default: the preset's `select.top_k` or `demo.top_k`, else 20)."""
    mode: str = "clamp"
    """clamp, zero or scale, as in intervene."""
    scale: float | None = None
    """Clamp value (default: the preset's `demo.scales[0]`, else -20, the paper's)."""
    clamp_unit: str | None = None
    """absolute or typical (scale × the feature's mean active activation); default: the preset's."""
    split: str = "dev"
    """Split screened and accumulated on (dev: the test split stays for reporting)."""
    greedy: bool = False
    """Also accumulate features greedily under `retain_budget` and evaluate the set on `test_split`."""
    retain_budget: float = 0
    """Allowed retain errors on dev: an integer count of known retain questions lost, or a fraction < 1."""
    max_features: int | None = None
    """Largest greedy set (default: top_k)."""
    test_split: str = "test"
    """Split the greedy set is evaluated on, once."""
    controls: bool = True
    """Evaluate the greedy set beside the same number of frequency-matched random features."""
    seed: int = 0
    """Seed of the controls when they are measured now (explicit ids); a selection's are drawn at selection."""
    permutations: bool | None = None
    """Letter protocol: all 24 answer orders."""


def check_screen_flags(cfg: ScreenConfig) -> None:
    check_mode(cfg.mode)
    for name in ("top_k", "max_features", "limit", "batch_size"):
        positive_int(getattr(cfg, name), f"--{name.replace('_', '-')}")
    if cfg.scale is not None:
        finite_float(cfg.scale, "--scale")
    allowed_errors(cfg.retain_budget, 1)
    for name in ("split", "test_split"):
        if getattr(cfg, name) not in ("dev", "test", "all"):
            raise UnlearnError(
                f"--{name.replace('_', '-')} must be dev, test or all, got {getattr(cfg, name)!r}."
            )
    if cfg.greedy and cfg.split == cfg.test_split and cfg.split != "all":
        log.warning("greedy set chosen and evaluated on the same split (%s): not an honest test", cfg.split)
    check_new_run(COMMAND, cfg.run_id, overwrite=cfg.overwrite)
    check_model_path(cfg.model)


def _interval(iv) -> list[float] | None:
    return None if iv is None else [iv.value, iv.low, iv.high]


def _contexts(selection) -> dict[int, dict]:
    """Top tokens and the first three contexts per feature, from the selection's stats (if it has them)."""
    if selection is None or not selection.source:
        return {}
    out = {}
    for src, topic in zip(str(selection.source).split(","), str(selection.topic).split("+"), strict=False):
        try:
            stats = read_json(Path(src))["topics"][topic].get("stats", [])
        except (OSError, KeyError, ValueError):
            continue
        for s in stats:
            out.setdefault(int(s["feature"]), {"top_tokens": s.get("top_tokens", [])[:5],
                                               "contexts": [c["text"] for c in s.get("contexts", [])[:3]]})  # fmt: skip
    return out


class Clamper:
    """Evaluates feature sets with `intervene.feature_edit` installed, on one prepared suite, against its
    unhooked run (`base`); caches by feature set."""

    def __init__(
        self, lm, sae, hook: str, suite, mode: str, scale: float, unit: str, typical: dict[int, float]
    ):
        self.lm, self.sae, self.hook, self.suite = lm, sae, hook, suite
        self.mode, self.scale, self.unit, self.typical = mode, scale, unit, typical
        self.base = None
        self.cache: dict[tuple[int, ...], tuple] = {}

    def values(self, feats: Sequence[int]) -> torch.Tensor | float:
        if self.mode == "clamp" and self.unit == "typical":
            return torch.tensor([self.scale * self.typical[f] for f in feats], dtype=torch.float64)
        return self.scale

    def run_base(self):
        with torch.inference_mode():
            self.base = self.suite.run(self.lm.model, desc="unhooked")
        return self.base

    def run(self, feats: Sequence[int], desc: str, typical: dict[int, float] | None = None):
        """(outcome, edit stats) with `feats` clamped; `typical` overrides the values' source (controls)."""
        key = tuple(feats)
        if key in self.cache and typical is None:
            return self.cache[key]
        saved = self.typical
        self.typical = typical or self.typical
        try:
            stats, values = EditStats(), self.values(feats)

            def hook(live: bool):
                return feature_edit(self.lm.model, self.sae, list(feats), self.mode, values, hook_name=self.hook,
                             stats=stats if live else EditStats())  # fmt: skip

            if isinstance(self.suite, EvalSuite) and self.base is not None:  # score only touched questions
                reuse = Reuse(self.base.questions, hook, self.hook)
                with torch.inference_mode():
                    out = self.suite.run(self.lm.model, desc=desc, reuse=reuse)
            else:
                with torch.inference_mode(), hook(True):
                    out = self.suite.run(self.lm.model, desc=desc)
        finally:
            self.typical = saved
        if typical is None:
            self.cache[key] = (out, stats)
        return out, stats

    def summary(self, out, stats: EditStats | None = None) -> dict:
        d = paired_deltas(out.questions, self.base.questions)
        b = out.block
        row = {"forget_acc": b.forget_acc, "forget_ci": b.forget_ci, "retain_acc": b.retain_acc,
               "retain_ci": b.retain_ci, "forget_acc_all": b.forget_acc_all, "retain_acc_all": b.retain_acc_all,
               "d_forget": _interval(d.get("forget")), "d_retain": _interval(d.get("retain")),
               "d_forget_all": _interval(d.get("forget_all")), "d_retain_all": _interval(d.get("retain_all")),
               "retain_errors": retain_errors(out.questions, self.base.questions)}  # fmt: skip
        if stats is not None:
            row["edit"] = stats.as_dict()
        return row

    def trial(self, feats: list[int]) -> Trial:
        out, _ = self.run(feats, desc=f"greedy +{feats[-1]} ({len(feats)})")
        return Trial(
            out.block.forget_acc, out.block.retain_acc, retain_errors(out.questions, self.base.questions)
        )


def _resolve(cfg: ScreenConfig, setup: Setup, lm, sae):
    """Selection, ranked ids, SAE, its spec and hook point: as `intervene` resolves them."""
    from unlearn.clamp.topics import read_topics

    selection = None if cfg.feature_ids else read_topics(cfg.features, cfg.topic)
    ranked, sae, spec, hook = resolve_targets(cfg, setup, lm, sae, selection)
    return selection, ranked, sae, spec, hook


def _suite(lm, cfg: ScreenConfig, split: str):
    from unlearn.eval.suite import eval_config_from_preset, prepare_eval

    ecfg = eval_config_from_preset(
        lm.preset, protocol=cfg.protocol, forget=cfg.forget_tasks, retain=cfg.retain_tasks,
        known_only=cfg.known_only, permutations=cfg.permutations, limit=cfg.limit, batch_size=cfg.batch_size,
        split=split,
    )  # fmt: skip
    if not ecfg.forget or not ecfg.retain:
        raise UnlearnError("Screening needs forget and retain tasks: pass --forget-tasks and --retain-tasks.")
    return prepare_eval(lm, ecfg)


def run_screen(cfg: ScreenConfig, *, lm=None, sae=None, suite=None, test_suite=None, console=None) -> Path:
    """Screen the top-K features alone on `cfg.split`; with `greedy`, accumulate them under the retain
    budget and evaluate the set on `cfg.test_split` beside its controls. Writes `results/screen-features/
    <run-id>/`: `screen.json` + `screen.csv`, and with greedy `greedy.json`, `features.json`, `test.json`."""
    from unlearn.eval.suite import weight_fingerprint
    from unlearn.models import load_model

    console = console or Console()
    setup = setup_of(cfg)
    check_screen_flags(cfg)
    lm = lm or load_model(setup)
    setup = setup.on(lm)
    preset = setup.preset
    selection, ranked, sae, sae_spec, hook = _resolve(cfg, setup, lm, sae)
    top_k = cfg.top_k or setup.select.get("top_k") or setup.demo.get("top_k")
    top_k = min(int(top_k or DEFAULT_TOP_K), len(ranked))
    candidates = ranked[:top_k]
    scale = float(cfg.scale if cfg.scale is not None else (setup.demo.get("scales") or [-20.0])[0])
    unit = cfg.clamp_unit or setup.clamp_unit
    if unit not in CLAMP_UNITS:
        raise UnlearnError(f"--clamp-unit must be one of {', '.join(CLAMP_UNITS)}, got {unit!r}.")
    want_controls = ["random-features"] if cfg.greedy and cfg.controls else []
    typical, control_ids, control_typical = feature_info(
        selection, ranked, lm, sae, hook, preset, unit=unit if cfg.mode == "clamp" else "absolute",
        controls=want_controls, topic=cfg.topic, seed=cfg.seed,
    )  # fmt: skip
    typical_of = dict(zip(ranked, typical or [], strict=False))
    suite = suite or _suite(lm, cfg, cfg.split)
    clamper = Clamper(lm, sae, hook, suite, cfg.mode, scale, unit, typical_of)
    contexts = _contexts(selection)
    eval_cfg = (
        dataclasses.asdict(suite.cfg) if dataclasses.is_dataclass(getattr(suite, "cfg", None)) else None
    )
    identity = {"command": COMMAND, "preset": preset.name if preset else None, "model": lm.name, "sae": sae_spec,
                "hook": hook, "features": selection.source if selection else None,
                "topic": selection.topic if selection else None, "candidates": candidates, "mode": cfg.mode,
                "scale": scale, "clamp_unit": unit, "split": cfg.split, "eval": eval_cfg,
                "sae_weights": weight_fingerprint(sae)}  # fmt: skip
    config = {"top_k": top_k, "greedy": cfg.greedy, "retain_budget": cfg.retain_budget,
              "max_features": cfg.max_features or top_k, "test_split": cfg.test_split}  # fmt: skip
    with (
        open_run(COMMAND, identity, config=config, run_id=cfg.run_id, overwrite=cfg.overwrite) as run,
        # trials share the prefix, and with every earlier run on this model
        hook_layer_cache(lm.model, hook, enabled=cfg.hook_cache, store=layer_store()) as hc,
    ):
        base = clamper.run_base()
        write_table(run.path / "questions" / "unhooked.csv", base.questions)
        console.log(f"unhooked ({cfg.split}): forget {_f(base.block.forget_acc)}, retain {_f(base.block.retain_acc)}; "
                    f"screening {len(candidates)} features at {hook}, {cfg.mode} {scale:g} ({unit})")  # fmt: skip
        rows = []
        for rank, f in enumerate(candidates, 1):
            out, stats = clamper.run([f], desc=f"feature {f} ({rank}/{len(candidates)})")
            row = {"rank": rank, "feature": f, "typical_activation": typical_of.get(f),
                   **clamper.summary(out, stats), **contexts.get(f, {})}  # fmt: skip
            row["d_forget"], row["d_forget_ci"] = _split_iv(row["d_forget"])
            row["d_retain"], row["d_retain_ci"] = _split_iv(row["d_retain"])
            rows.append(row)
            console.log(f"[{rank}/{len(candidates)}] feature {f}: forget {_f(row['forget_acc'])} "
                        f"(Δ {_d(row['d_forget'])}), retain {_f(row['retain_acc'])} (Δ {_d(row['d_retain'])}), "
                        f"{row['retain_errors']:g} retain errors")  # fmt: skip
        order = screening_order(rows)
        screen = {"baseline": base.block, "n_known_retain": n_known_retain(base.questions), "split": cfg.split,
                  "mode": cfg.mode, "scale": scale, "clamp_unit": unit, "hook": hook, "order": order,
                  "features": rows}  # fmt: skip
        write_json(run.path / "screen.json", screen)
        write_table(run.path / "screen.csv", screen_frame(screen))
        console.print(screen_table(screen, f"screening on {cfg.split} ({run.path})"))
        if cfg.greedy:
            greedy = _greedy(cfg, run.path, clamper, order, top_k, selection, ranked, sae_spec, hook,
                             (typical_of, control_ids, control_typical), console)  # fmt: skip
            if greedy["chosen"]:
                ts = test_suite or _suite(lm, cfg, cfg.test_split)
                _test(run.path, lm, sae, hook, ts, cfg, greedy, ranked, scale, unit,
                      (typical_of, control_ids, control_typical), console)  # fmt: skip
        write_json(run.path / "hook_cache.json", hc.stats.as_dict())
    return run.path


def _split_iv(iv):
    return (None, None) if iv is None else (iv[0], iv[1:])


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _d(v) -> str:
    return "-" if v is None else f"{v:+.3f}"


def _greedy(cfg, run_dir, clamper, order, top_k, selection, ranked, sae_spec, hook, info, console) -> dict:
    typical_of, control_ids, control_typical = info
    base_q = clamper.base.questions
    n_ret = n_known_retain(base_q)
    allowed = allowed_errors(cfg.retain_budget, n_ret)
    max_features = cfg.max_features or top_k

    def evaluate(feats: list[int]) -> Trial:  # logged as it runs: each trial is a full evaluation
        t = clamper.trial(feats)
        verdict = "keep" if t.retain_errors <= allowed + 1e-9 else "drop"
        console.log(f"greedy {verdict} feature {feats[-1]} (set of {len(feats)}): forget {_f(t.forget_acc)}, "
                    f"retain {_f(t.retain_acc)}, {t.retain_errors:g} retain errors (allowed {allowed:g})")  # fmt: skip
        return t

    chosen, steps = greedy_select(order, evaluate, allowed, max_features)
    final = clamper.summary(*clamper.run(chosen, desc="greedy set")) if chosen else None
    greedy = {"chosen": chosen, "steps": steps, "retain_budget": cfg.retain_budget, "allowed_errors": allowed,
              "n_known_retain": n_ret, "max_features": max_features, "split": cfg.split, "dev": final}  # fmt: skip
    write_json(run_dir / "greedy.json", greedy)
    # the chosen set as a selection (select-features' format): `intervene --features <run>` reads it
    rank_of = {f: i for i, f in enumerate(ranked)}
    topic = (selection.topic if selection else None) or "greedy"
    t = {"features": chosen, "source": selection.source if selection else None,
         "typical_activation": [typical_of[f] for f in chosen] if typical_of else None,
         "stats": [{"feature": f, "greedy_step": i + 1} for i, f in enumerate(chosen)]}  # fmt: skip
    if control_ids is not None:
        t["controls"] = {"controls": [control_ids[rank_of[f]] for f in chosen],
                         "control_typical_activation": [control_typical[rank_of[f]] for f in chosen],
                         "control_rule": "the selection's frequency-matched control of each chosen feature"}  # fmt: skip
    rule = {"retain_threshold": selection.retain_threshold if selection else None,
            "rank_by": "greedy", "n_features": len(chosen),
            "greedy": {"screen_run": str(run_dir), "retain_budget": cfg.retain_budget, "allowed_errors": allowed,
                       "split": cfg.split, "mode": cfg.mode, "scale": clamper.scale, "clamp_unit": clamper.unit,
                       "candidates": len(order)}}  # fmt: skip
    write_json(run_dir / "features.json", {"sae": sae_spec, "hook": hook, "topics": {topic: t}, "rule": rule})
    console.log(f"greedy set ({len(chosen)} features, ≤ {allowed:g} retain errors on {cfg.split}): {chosen}")
    return greedy


def _test(run_dir, lm, sae, hook, test_suite, cfg, greedy, ranked, scale, unit, info, console) -> None:
    """The greedy set once on the test split, beside its matched random features and the top-n rule."""
    typical_of, control_ids, control_typical = info
    chosen = greedy["chosen"]
    tester = Clamper(lm, sae, hook, test_suite, cfg.mode, scale, unit, typical_of)
    base = tester.run_base()
    write_table(run_dir / "test" / "unhooked.csv", base.questions)
    points = {"greedy": (chosen, None), f"top-{len(chosen)}": (ranked[: len(chosen)], None)}
    if control_ids is not None:
        rank_of = {f: i for i, f in enumerate(ranked)}
        ctrl = [control_ids[rank_of[f]] for f in chosen]
        points["greedy_ctrl-features"] = (
            ctrl,
            {c: control_typical[rank_of[f]] for c, f in zip(ctrl, chosen, strict=True)},
        )
    out = {"split": cfg.test_split, "baseline": base.block, "points": {}}
    outcomes = {}
    for name, (feats, typ) in points.items():
        outcomes[name], stats = tester.run(feats, desc=f"test: {name}", typical=typ)
        write_table(run_dir / "test" / f"{name}.csv", outcomes[name].questions)
        out["points"][name] = {"features": feats, "metrics": outcomes[name].block,
                               **tester.summary(outcomes[name], stats)}  # fmt: skip
    if "greedy_ctrl-features" in outcomes:  # the claim: below its control, paired on the same questions
        d = paired_deltas(outcomes["greedy"].questions, outcomes["greedy_ctrl-features"].questions)
        out["points"]["greedy"]["vs_control"] = {k: _interval(v) for k, v in d.items()}
    write_json(run_dir / "test.json", out)
    console.print(test_table(out, f"greedy set on {cfg.test_split} ({run_dir})"))


# --- tables --------------------------------------------------------------------------------------------


def screen_frame(screen: dict) -> pd.DataFrame:
    """screen.json as one row per feature, in screening order (`order` = position)."""
    pos = {f: i + 1 for i, f in enumerate(screen["order"])}
    rows = []
    for r in screen["features"]:
        lo = r.get("d_forget_ci") or [None, None]
        rlo = r.get("d_retain_ci") or [None, None]
        rows.append({"order": pos[r["feature"]], "rank": r["rank"], "feature": r["feature"],
                     "forget_acc": r["forget_acc"], "retain_acc": r["retain_acc"], "d_forget": r["d_forget"],
                     "d_forget_lo": lo[0], "d_forget_hi": lo[1], "d_retain": r["d_retain"], "d_retain_lo": rlo[0],
                     "d_retain_hi": rlo[1], "retain_errors": r["retain_errors"],
                     "edit_rel_norm": (r.get("edit") or {}).get("rel_norm"),
                     "top_tokens": ", ".join(repr(t) for t in r.get("top_tokens", []))})  # fmt: skip
    return pd.DataFrame(rows).sort_values("order", ignore_index=True)


def _ci(v, ci) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+.3f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci and ci[0] is not None else "")


def screen_table(screen: dict, title: str, limit: int = 20) -> Table:
    table = Table(title=title)
    for col in ("#", "feature", "sel. rank", "forget", "Δ forget [95% CI]", "retain", "Δ retain [95% CI]",
                "retain errors", "top tokens"):  # fmt: skip
        table.add_column(col, justify="left" if col == "top tokens" else "right")
    by_id = {r["feature"]: r for r in screen["features"]}
    for i, f in enumerate(screen["order"][:limit], 1):
        r = by_id[f]
        table.add_row(str(i), str(f), str(r["rank"]), _f(r["forget_acc"]), _ci(r["d_forget"], r.get("d_forget_ci")),
                      _f(r["retain_acc"]), _ci(r["d_retain"], r.get("d_retain_ci")), f"{r['retain_errors']:g}",
                      ", ".join(repr(t) for t in r.get("top_tokens", [])[:4]))  # fmt: skip
    b = EvalBlock.of(screen["baseline"])
    table.caption = (
        f"unhooked: forget {_f(b.forget_acc)}, retain {_f(b.retain_acc)} "
        f"({screen['n_known_retain']} known retain)"
    )
    return table


def test_frame(test: dict) -> pd.DataFrame:
    b = EvalBlock.of(test["baseline"])
    rows = [{"point": "unhooked", "n_features": 0, "forget_acc": b.forget_acc, "forget_ci": b.forget_ci,
             "retain_acc": b.retain_acc, "retain_ci": b.retain_ci}]  # fmt: skip
    for name, p in test["points"].items():
        m = EvalBlock.of(p["metrics"])
        rows.append({"point": name, "n_features": len(p["features"]), "forget_acc": m.forget_acc,
                     "forget_ci": m.forget_ci, "retain_acc": m.retain_acc,
                     "retain_ci": m.retain_ci, "d_forget": p.get("d_forget"), "d_retain": p.get("d_retain"),
                     "retain_errors": p.get("retain_errors")})  # fmt: skip
    return pd.DataFrame(rows)


def test_table(test: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("point", "n", "forget [95% CI]", "Δ forget [95% CI]", "retain [95% CI]", "Δ retain [95% CI]"):
        table.add_column(col, justify="left" if col == "point" else "right")
    for _, r in test_frame(test).iterrows():
        acc = lambda v, ci: _f(v) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if isinstance(ci, list) else "")  # noqa: E731
        dd = lambda d: "-" if not isinstance(d, list) else _ci(d[0], d[1:])  # noqa: E731
        table.add_row(r["point"], str(r["n_features"]), acc(r["forget_acc"], r.get("forget_ci")), dd(r.get("d_forget")),
                      acc(r["retain_acc"], r.get("retain_ci")), dd(r.get("d_retain")))  # fmt: skip
    vs = test["points"].get("greedy", {}).get("vs_control", {}).get("forget")
    if vs:
        table.caption = f"greedy − its random control, forget: {_ci(vs[0], vs[1:])} (paired)"
    return table


screen_features_command = command(
    ScreenConfig, run_screen,
    doc="Clamp each candidate feature alone on dev; with --greedy, accumulate them under a retain budget.",
    flags={**EVAL_FLAGS, "feature_ids": Flag(comma=True)},
)  # fmt: skip
