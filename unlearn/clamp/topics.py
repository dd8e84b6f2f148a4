"""Several forget topics at once: merged selections for `intervene`, and the cross-topic table.

Farrell, Lau & Conmy (arXiv 2410.19278) unlearn more than one topic at a time; WMDP (Li et al., arXiv
2403.03218) has biology, chemistry and cyber-security forget sets. Here a selection of one topic is a
ranked list of SAE features (`select-features --topic bio --topic chem` writes one per topic); to clamp
two topics at once, `read_topics` merges the selections into one ranked list, **round-robin** (the first
feature of each topic, then the second of each, ...), dropping a feature already taken, with its typical
activation and its frequency-matched control kept aligned. The top n of the merged list then holds about
n / T features of each of T topics, and clamping it is exactly the sum of the separate topics' edits
wherever their features do not overlap (the edit `(f' - f) @ W_dec` is linear in the chosen set).

`unlearn cross-topic` evaluates, on every topic's own question set, the unhooked model, each topic's
top-n clamped alone and all of them together: the diagonal is the forgetting, the off-diagonal cells the
cross-topic effect (clamping bio features on chemistry questions and vice versa).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from unlearn.clamp.select import Selection, read_selection
from unlearn.errors import UnlearnError
from unlearn.eval.hook_cache import hook_layer_cache, layer_store
from unlearn.options import EVAL_FLAGS, EvalFlags, Flag, RunFlags, command, parse_list

log = logging.getLogger(__name__)


def _items(text: str | Path | None) -> list:
    if text is None:
        return [None]
    if isinstance(text, Path):
        return [text]
    return parse_list(str(text)) or [None]


def topic_pairs(path: str | Path | None, topic: str | None) -> list[tuple[str | Path | None, str | None]]:
    """(selection, topic) pairs: `path` (`--features`) may list run folders separated by commas
    (`dirA,dirB`: each folder's first topic, or the topics of `topic` in the same order), `topic` may
    list topics of one run (`bio,chem`)."""
    paths, topics = _items(path), _items(topic)
    if len(paths) == 1:
        return [(paths[0], t) for t in topics]
    if topics == [None]:
        return [(p, None) for p in paths]
    if len(topics) != len(paths):
        raise UnlearnError(
            f"--features names {len(paths)} selections but --topic {len(topics)} topics: pass one topic "
            "per selection (same order), or none (each selection's first topic)."
        )
    return list(zip(paths, topics, strict=True))


def read_topics(path: str | Path | None = None, topic: str | None = None) -> Selection:
    """One selection (`read_selection`), or several merged by `merge_selections`: see `topic_pairs` for
    how `dirA,dirB` and `--topic bio,chem` are read."""
    pairs = topic_pairs(path, topic)
    if len(pairs) == 1:
        return read_selection(*pairs[0])
    return merge_selections([read_selection(p, t) for p, t in pairs])


def merge_selections(selections: list[Selection]) -> Selection:
    """Round-robin merge of several topics' ranked features (see the module docstring); the SAE and hook
    point must agree. Typical activations and controls stay aligned with the merged ranking (None when
    any selection lacks them)."""
    if not selections:
        raise UnlearnError("No selection to merge.")
    for name in ("sae", "hook"):
        values = {getattr(s, name) for s in selections} - {None}
        if len(values) > 1:
            raise UnlearnError(
                f"The selections were made with different {name}s ({', '.join(sorted(map(str, values)))}); "
                "clamp topics selected with one SAE at one hook point."
            )
    topics = [s.topic or f"#{i}" for i, s in enumerate(selections)]
    if len(set(topics)) != len(topics):
        raise UnlearnError(f"Topic listed twice: {topics}.")
    has_typical = all(s.typical is not None for s in selections)
    has_controls = all(s.controls is not None and s.control_typical is not None for s in selections)
    feats, typical, controls, control_typical, seen = [], [], [], [], set()
    for rank in range(max(len(s.features) for s in selections)):
        for s in selections:
            if rank >= len(s.features) or s.features[rank] in seen:
                continue
            seen.add(s.features[rank])
            feats.append(s.features[rank])
            if has_typical:
                typical.append(s.typical[rank])
            if has_controls:
                controls.append(s.controls[rank])
                control_typical.append(s.control_typical[rank])
    overlap = sum(len(s.features) for s in selections) - len(feats)
    if overlap:
        log.info("%d feature(s) selected for more than one topic are clamped once", overlap)

    def same(name: str):
        values = {getattr(s, name) for s in selections}
        return values.pop() if len(values) == 1 else None

    return Selection(
        features=feats, sae=same("sae") or next((s.sae for s in selections if s.sae), None),
        hook=same("hook") or next((s.hook for s in selections if s.hook), None), topic="+".join(topics),
        retain_threshold=same("retain_threshold"), rank_by=same("rank_by"),
        source=",".join(str(s.source) for s in selections), typical=typical if has_typical else None,
        controls=controls if has_controls else None,
        control_typical=control_typical if has_controls else None,
    )  # fmt: skip


def truncated(selection: Selection, n: int) -> Selection:
    """The selection's top `n` features (with their typical values and controls)."""
    cut = lambda v: None if v is None else list(v[:n])  # noqa: E731
    return dataclasses.replace(selection, features=selection.features[:n], typical=cut(selection.typical),
                               controls=cut(selection.controls), control_typical=cut(selection.control_typical))  # fmt: skip


def control_of(selection: Selection) -> Selection:
    """The selection's frequency-matched random features in its place (with their own typical values), so
    `clamp_values` clamps them exactly as the selected ones (the `random-features` control of intervene);
    a control feature drawn for two merged topics is clamped once."""
    if selection.controls is None or selection.control_typical is None:
        raise UnlearnError(
            f"{selection.source} has no control features (an older selection): rerun select-features "
            "or pass --no-controls."
        )
    pairs = dict(
        zip(selection.controls, selection.control_typical, strict=True)
    )  # merged topics may share one
    return dataclasses.replace(selection, features=list(pairs), typical=list(pairs.values()),
                               topic=f"{selection.topic} ctrl-features", controls=None, control_typical=None)  # fmt: skip


def topic_questions(preset, topic: str) -> str | None:
    """The question set a topic is judged on: the one its selection text reads (`questions:offline:chem@dev`
    -> `offline:chem`), else None."""
    from unlearn.data import split_part

    text = (preset.select.get("forget_text", {}) if preset else {}).get(topic)
    texts = [text] if isinstance(text, str) else list(text or [])
    own = [split_part(t.removeprefix("questions:"))[0] for t in texts if t.startswith("questions:")]
    return own[0] if own else None


def clamp_values(selection: Selection, unit: str, scale: float) -> torch.Tensor | float:
    """Clamp value(s) for `selection.features`: `scale` (absolute) or `scale × μ_i` (typical)."""
    if unit == "absolute":
        return scale
    if selection.typical is None:
        raise UnlearnError(
            f"{selection.source} has no typical activations (an older selection): rerun select-features "
            "or pass --clamp-unit absolute."
        )
    return torch.tensor([scale * float(m) for m in selection.typical], dtype=torch.float64)


# --- the cross-topic table -------------------------------------------------------------------------------


@dataclass
class CrossTopicConfig(EvalFlags, RunFlags):
    features: str | None = None
    """select-features run folder(s) holding the topics (comma list; default: the latest run)."""
    topics: list[str] | None = None
    """Topics to clamp (default: every topic of the selection)."""
    sae: str | None = None
    """SAE instead of the selection's."""
    hook: str | None = None
    """Hook point instead of the selection's."""
    n_features: int | None = None
    """Top-n features of each topic (default: the preset's `demo.n_features[0]`, else 20)."""
    scale: float | None = None
    """Clamp value (default: the preset's `demo.scales[0]`, else -20)."""
    clamp_unit: str | None = None
    """absolute or typical (default: the preset's `clamp_unit`)."""
    forget_tasks: list[str] | None = None
    """Question sets, one per topic in `topics` order (default: each topic's own, from the preset)."""
    split: str | None = None
    """dev, test or all (default: the preset's)."""
    controls: bool = True
    """Also clamp each state's frequency-matched random features the same way (`<state> ctrl-features`):
    an off-diagonal effect the control shows too is not about the topic."""
    extra: dict = field(default_factory=dict)
    """Further `EvalConfig` overrides (notebooks, tests)."""


def demo_defaults(setup, n: int | None, scale: float | None) -> tuple[int, float]:
    """Top-n and clamp value: as given, else the setup's demo point (`demo.n_features[0]`, `demo.scales[0]`),
    else 20 and -20."""
    demo = setup.demo
    return int(n or (demo.get("n_features") or [20])[0]), float(
        scale if scale is not None else (demo.get("scales") or [-20.0])[0]
    )


def source_of(task: str) -> str:
    """The question source a suite task came from: `offline:retain@test/history` -> `offline:retain`."""
    return task.split("/")[0].split("@")[0] if task.startswith("offline:") else task.split("@")[0]


def _pooled(frame: pd.DataFrame) -> tuple[float | None, list[float] | None]:
    """Known-subset accuracy (all questions without one) of a per-question frame, with its interval
    stratified by task, as `EvalBlock` pools."""
    from unlearn.stats import _truthy, outcome_column, stratified_bootstrap_ci

    if frame.empty:
        return None, None
    known = _truthy(frame["known"]) if "known" in frame and frame["known"].notna().any() else None
    on = frame[known] if known is not None else frame
    if on.empty:
        return None, None
    ci = stratified_bootstrap_ci(on[outcome_column(on)].astype(float), on["task"])
    return ci.value, [ci.low, ci.high]


def cross_frame(states: dict, base, topics_of: dict[str, str]) -> pd.DataFrame:
    """One row per (clamped state, question topic, or `retain`): pooled accuracy with its interval and
    the paired change vs unhooked. `topics_of` maps a question source to the topic it measures."""
    from unlearn.stats import paired_deltas

    groups = list(dict.fromkeys(topics_of.values())) + ["retain"]

    def rows_of(frame: pd.DataFrame, group: str) -> pd.DataFrame:
        if group == "retain":
            return frame[frame["role"] == "retain"]
        src = frame["task"].map(source_of).map(topics_of)
        return frame[(frame["role"] == "forget") & (src == group)]

    rows = []
    for state, out in {"unhooked": base, **states}.items():
        for group in groups:
            mine = rows_of(out.questions, group)
            acc, ci = _pooled(mine)
            row = {"clamped": state, "questions": group, "n": int(len(mine)), "acc": acc,
                   "acc_lo": ci[0] if ci else None, "acc_hi": ci[1] if ci else None}  # fmt: skip
            if state != "unhooked" and len(mine):
                role = "retain" if group == "retain" else "forget"
                d = paired_deltas(mine, rows_of(base.questions, group), roles=(role,)).get(role)
                if d is not None:
                    row |= {"delta": d.value, "delta_lo": d.low, "delta_hi": d.high}
            rows.append(row)
    return pd.DataFrame(rows)


def run_cross_topic(cfg: CrossTopicConfig, *, lm=None, sae=None, suite=None, console=None) -> Path:
    """Evaluate unhooked, each topic's top-n clamped alone, and all topics together, on every topic's
    question set; writes `results/cross-topic/<run-id>/` (`cross.json`, `cross.csv`)."""
    from unlearn.clamp.intervene import CLAMP_UNITS, feature_edit
    from unlearn.clamp.select import resolve_sae
    from unlearn.eval.suite import eval_config_from_preset, prepare_eval, weight_fingerprint
    from unlearn.models import load_model
    from unlearn.results import check_new_run, open_run, read_json, write_json, write_table
    from unlearn.setup import setup_of

    console = console or Console()
    setup = setup_of(cfg)
    check_new_run("cross-topic", cfg.run_id, overwrite=cfg.overwrite)
    pairs = topic_pairs(cfg.features, ",".join(cfg.topics) if cfg.topics else None)
    if len(pairs) == 1 and pairs[0][1] is None:  # one run, no topic named: all of its topics
        src = read_selection(*pairs[0]).source
        pairs = [(pairs[0][0], t) for t in read_json(Path(src)).get("topics", {})]
    selections = [read_selection(p, t) for p, t in pairs]
    merged = merge_selections(selections)  # checks one SAE and hook point, distinct topics
    topics = [s.topic for s in selections]
    lm = lm or load_model(setup)
    setup = setup.on(lm)
    preset = setup.preset
    n, scale = demo_defaults(setup, cfg.n_features, cfg.scale)
    unit = cfg.clamp_unit or setup.clamp_unit
    if unit not in CLAMP_UNITS:
        raise UnlearnError(f"--clamp-unit must be one of {', '.join(CLAMP_UNITS)}, got {unit!r}.")
    if sae is None:
        sae, sae_spec, hook = resolve_sae(setup, lm.model, merged.sae, merged.hook)
    else:
        sae_spec, hook = cfg.sae or "<in-memory>", cfg.hook or sae.hook_name
    forget = cfg.forget_tasks or [topic_questions(preset, t) for t in topics]
    if None in forget or len(forget) != len(topics):
        missing = [t for t, f in zip(topics, forget, strict=False) if f is None]
        raise UnlearnError(
            f"No question set known for topic(s) {missing or topics}: pass --forget-tasks with one "
            "question source per topic, in topic order."
        )
    topics_of = {f.split("@")[0]: t for f, t in zip(forget, topics, strict=True)}
    if suite is None:
        ecfg = eval_config_from_preset(preset, forget=forget, retain=cfg.retain_tasks, protocol=cfg.protocol,
                                       known_only=cfg.known_only, limit=cfg.limit, batch_size=cfg.batch_size,
                                       split=cfg.split, **cfg.extra)  # fmt: skip
        suite = prepare_eval(lm, ecfg)
    cut = [truncated(s, n) for s in selections]
    states = dict(zip(topics, cut, strict=True))
    if len(cut) > 1:
        states["+".join(topics)] = merge_selections(cut)
    if cfg.controls:
        states |= {f"{name} ctrl-features": control_of(sel) for name, sel in states.items()}
    eval_cfg = (
        dataclasses.asdict(suite.cfg) if dataclasses.is_dataclass(getattr(suite, "cfg", None)) else None
    )
    identity = {"command": "cross-topic", "preset": preset.name if preset else None, "model": lm.name,
                "sae": sae_spec, "hook": hook, "features": [s.source for s in selections], "topics": topics,
                "sae_weights": weight_fingerprint(sae), "clamp_unit": unit, "n_features": n, "scale": scale,
                "eval": eval_cfg}  # fmt: skip
    with (
        open_run("cross-topic", identity, run_id=cfg.run_id, overwrite=cfg.overwrite) as run,
        # every state shares the prefix, and with every earlier run on this model
        hook_layer_cache(lm.model, hook, enabled=cfg.hook_cache, store=layer_store()),
    ):
        with torch.inference_mode():
            base = suite.run(lm.model, desc="unhooked")
        write_table(run.path / "questions" / "unhooked.csv", base.questions)
        outs, points = {}, {}
        for state, sel in states.items():
            values = clamp_values(sel, unit, scale)
            with (
                torch.inference_mode(),
                feature_edit(lm.model, sae, sel.features, "clamp", values, hook_name=hook),
            ):
                outs[state] = suite.run(lm.model, desc=f"clamp {state}")
            points[state] = {"features": sel.features, "clamp_values": values.tolist() if torch.is_tensor(values)
                             else [values] * len(sel.features), "metrics": outs[state].block}  # fmt: skip
            write_table(run.path / "questions" / f"{state}.csv", outs[state].questions)
            console.log(f"clamped {state}: {len(sel.features)} features")
        frame = cross_frame(outs, base, topics_of)
        write_table(run.path / "cross.csv", frame)
        write_json(run.path / "cross.json", {"baseline": base.block, "states": points, "topics": topics,
                                             "topics_of": topics_of, "n_features": n, "scale": scale,
                                             "clamp_unit": unit, "split": base.block.split,
                                             "table": frame.astype(object).where(frame.notna(), None).to_dict(orient="records")})  # fmt: skip
    console.print(cross_table(frame, f"cross-topic ({run.path}): top {n} per topic at {scale:g} ({unit})"))
    return run.path


def cross_table(frame: pd.DataFrame, title: str) -> Table:
    """Rows: clamped state; columns: each topic's questions and retain, `acc (Δ [95% CI])`."""
    table = Table(title=title)
    table.add_column("clamped")
    groups = list(dict.fromkeys(frame["questions"]))
    for g in groups:
        table.add_column(f"{g} questions", justify="right")
    for state, rows in frame.groupby("clamped", sort=False):
        cells = [str(state)]
        for g in groups:
            r = rows[rows["questions"] == g].iloc[0]
            d = r.get("delta")
            delta = (
                "" if d is None or pd.isna(d) else f" ({d:+.3f} [{r['delta_lo']:+.2f}, {r['delta_hi']:+.2f}])"
            )
            cells.append(_fmt(r["acc"]) + delta)
        table.add_row(*cells)
    return table


def _fmt(v) -> str:
    return "-" if v is None or pd.isna(v) else f"{v:.3f}"


cross_topic_command = command(
    CrossTopicConfig, run_cross_topic,
    doc="Clamp each topic's features alone and all together; accuracy on every topic's questions.",
    flags={"topics": Flag("--topic", help="Topic to clamp (repeatable; default: all)."),
           **EVAL_FLAGS},
)  # fmt: skip
