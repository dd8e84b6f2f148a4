"""Clamp SAE features inside the model (the paper's method) and sweep the clamp over a grid.

The intervention of Farrell, Lau & Conmy (arXiv 2410.19278, §3; SAEBench `sae_bench/evals/unlearning/`):
at the hook point, `f = encode(x)`; for each chosen feature i, where `f_i > 0`, replace `f_i` by `f_i'`;
output `decode(f') + (x - decode(f))`, i.e. the reconstruction error is kept, so the model is untouched
wherever no chosen feature fires. Since decode is affine this equals the cheap exact form
`x + (f'_K - f_K) @ W_dec[K]`, which needs only the chosen encoder columns (`SAE.encode_subset`).

Modes (`f_i'` where `f_i > 0`), each with one number `value` (the CLI's `--scale`): `clamp` sets it to
`value`, the clamp value (the paper's "negative scaling": `--scale -20` is `f_i = -multiplier` with
multiplier 20), `zero` sets it to 0 (zero ablation, which the paper finds ineffective), `scale` multiplies
it by `value`, a factor. `feature_edit` installs any of them.

Clamp units (`--clamp-unit`): `absolute` uses `--scale` as the clamp value itself (the paper's numbers, for
SAEs in their published convention); `typical` clamps feature i to `--scale × μ_i`, μ_i its mean activation
where active on forget text (measured at selection), so a value means the same relative edit for every
feature and every SAE scale convention.

Controls (`--controls`): each point is repeated with (a) `random-features`, frequency-matched random
features clamped the same way, and (b) `random-direction`, the same coefficients `f' − f` applied to the
chosen decoder rows rotated by one seeded random orthogonal matrix (`random_rotation`): same per-token
edit norm, random direction. An effect the controls also show is not about the topic.

BOS: positions holding the BOS token are left untouched, as SAEBench does (Gemma's BOS residual is huge
and unlike any text token; editing it shifts every later position). The token ids are read by a
pre-hook on the model itself, so this holds under any caller (our evaluator, lm-eval, `generate`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, get_args

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from unlearn import checks
from unlearn.checks import check_model_path, finite_float, finite_floats, positive_int, positive_ints
from unlearn.clamp.controls import CONTROLS, EditStats, feature_info, random_rotation, with_controls
from unlearn.clamp.dilution import Diluter, filler_source
from unlearn.clamp.gate_points import (
    DEFAULT_FPR,
    calibrate_gate,
    check_gates,
    gate_settings,
    with_scored_rates,
)
from unlearn.clamp.gates import FiringLog, Gate, gated, real_tokens, sink_tokens
from unlearn.clamp.shard import (
    FanoutFlags,
    check_shard_flags,
    open_shard,
    parse_shard,
    shard_points,
    shard_state,
)
from unlearn.errors import UnlearnError
from unlearn.eval.hook_cache import hook_layer_cache, layer_store
from unlearn.eval.suite import EvalSuite, Reuse
from unlearn.hooks import edit_with_inputs, parse_hook_name, sae_site, text_config
from unlearn.models import LoadedModel, load_model
from unlearn.options import EVAL_FLAGS, EvalFlags, Flag, RunFlags, command, parse_list
from unlearn.results import (
    EvalBlock,
    check_new_run,
    find_resumable,
    open_run,
    read_json,
    results_dir,
    write_json,
    write_table,
)
from unlearn.setup import Setup, setup_of

log = logging.getLogger(__name__)

Mode = Literal["clamp", "zero", "scale"]
MODES: tuple[str, ...] = get_args(Mode)
ClampUnit = Literal["absolute", "typical"]
CLAMP_UNITS: tuple[str, ...] = get_args(ClampUnit)


def check_mode(mode: str) -> Mode:
    if mode not in MODES:
        raise UnlearnError(f"Unknown intervention mode {mode!r}; use one of: {', '.join(MODES)}.")
    return mode  # type: ignore[return-value]


def new_values(f_NK: Tensor, mode: Mode, value: float | Tensor) -> Tensor:
    """`f'` for the chosen features: only active entries (`f > 0`) change, as in the paper and SAEBench.

    `value` (the clamp value, or the factor in scale mode) is one number or one per feature (shape (K,)):
    per-feature clamp values (`typical` unit)."""
    active_NK = f_NK > 0
    if torch.is_tensor(value):
        value = value.to(f_NK.dtype).to(f_NK.device)
    if mode == "clamp":
        full = value if torch.is_tensor(value) else torch.full_like(f_NK, value)
        return torch.where(active_NK, full.expand_as(f_NK), f_NK)
    if mode == "zero":
        return torch.where(active_NK, torch.zeros_like(f_NK), f_NK)
    if mode == "scale":
        return torch.where(active_NK, f_NK * value, f_NK)
    raise UnlearnError(f"Unknown intervention mode {mode!r}; use one of: {', '.join(MODES)}.")


def clamped(
    sae: nn.Module,
    x_ND: Tensor,
    feature_ids: Sequence[int] | Tensor,
    mode: Mode,
    value: float | Tensor,
    protect_N: Tensor | None = None,
    *,
    directions_KD: Tensor | None = None,
) -> Tensor:
    """The edited activation `x + (f'_K - f_K) @ W_dec[K]` (cheap exact form), in the wider of the two
    dtypes so that a position where nothing changes comes back bit-identical after the caller's cast.

    `protect_N` (bool, shape of `x` without the last dim) marks positions to leave alone (BOS).
    `directions_KD` replaces the decoder rows `W_dec[K]` (the random-direction control).
    """
    idx_K = torch.as_tensor(feature_ids, dtype=torch.long, device=sae.W_dec.device)
    if idx_K.numel() == 0:
        return x_ND
    f_NK = sae.encode_subset(x_ND, idx_K)  # SAE dtype
    df_NK = new_values(f_NK, mode, value) - f_NK
    if protect_N is not None:
        df_NK = df_NK.masked_fill(protect_N.unsqueeze(-1), 0)
    dirs_KD = sae.W_dec[idx_K] if directions_KD is None else directions_KD.to(df_NK.dtype)
    dx_ND = df_NK @ dirs_KD  # (..., d_in)
    wide = torch.promote_types(x_ND.dtype, dx_ND.dtype)
    return x_ND.to(wide) + dx_ND.to(wide)


def _bos_id(model: nn.Module) -> int | None:
    return getattr(text_config(model), "bos_token_id", None)


@contextmanager
def feature_edit(
    model: nn.Module,
    sae: nn.Module,
    feature_ids: Sequence[int] | Tensor,
    mode: Mode = "clamp",
    value: float | Tensor = -20.0,
    *,
    hook_name: str | None = None,
    skip_bos: bool = True,
    bos_token_id: int | None = None,
    sink_ratio: float | None = None,
    directions_KD: Tensor | None = None,
    stats: EditStats | None = None,
) -> Iterator[None]:
    """Edit `sae.hook_name` (or `hook_name`) so that every forward inside the block runs with the chosen
    features edited by `mode` (clamped, zeroed or scaled). With no features the hook returns the
    activation object itself (bit-identical).

    `bos_token_id` defaults to the model config's; positions holding it are not edited unless
    `skip_bos=False`; with `sink_ratio`, neither are massive-activation tokens (`gates.sink_tokens`).
    `value` may hold one value per feature; `directions_KD` replaces their decoder
    rows (`clamped`). `stats` accumulates the edit's size over every forward run inside the block.
    """
    mode = check_mode(mode)
    hook, idx_K = sae_site(model, sae, feature_ids, hook_name)
    bos = bos_token_id if bos_token_id is not None else _bos_id(model)

    def fn(x_BTD: Tensor, seen: dict) -> Tensor:
        if idx_K.numel() == 0:
            return x_BTD
        ids_BT = seen["input_ids"]
        protect_BT = None
        if skip_bos and bos is not None and ids_BT is not None and ids_BT.shape == x_BTD.shape[:-1]:
            protect_BT = (ids_BT == bos).to(x_BTD.device)
        if sink_ratio is not None:
            real_BT = real_tokens(seen.get("attention_mask"), x_BTD.shape[:-1], x_BTD.device)
            text_BT = real_BT if protect_BT is None else real_BT & ~protect_BT
            sink_BT = sink_tokens(x_BTD.detach().double().norm(dim=-1), text_BT, sink_ratio)
            protect_BT = sink_BT if protect_BT is None else protect_BT | sink_BT
        out_BTD = clamped(sae, x_BTD, idx_K, mode, value, protect_BT, directions_KD=directions_KD)
        if stats is not None:
            # padding is not counted, whether behind a 2D mask or a packed row's 4D one
            real_BT = real_tokens(seen.get("attention_mask"), x_BTD.shape[:-1], x_BTD.device)
            if protect_BT is not None:
                real_BT &= ~protect_BT
            stats.update(x_BTD, out_BTD, real_BT)
        return out_BTD

    with edit_with_inputs(model, hook, fn):
        yield


# --- the sweep -----------------------------------------------------------------------------------------


@dataclass
class InterveneConfig(FanoutFlags, EvalFlags, RunFlags):
    features: str | None = None
    """select-features run folder or its features.json (default: the latest run); `dirA,dirB` merges the
    selections (`unlearn.clamp.topics.read_topics`: round-robin, so the top n holds each topic's best)."""
    topic: str | None = None
    """Topic of the selection to clamp (default: its first); `bio,chem` clamps several topics at once."""
    feature_ids: list[int] | None = None
    """Explicit feature ids, ranked, instead of a selection."""
    sae: str | None = None
    """SAE instead of the selection's / preset's."""
    hook: str | None = None
    """Hook point instead of the selection's / the SAE's."""
    modes: list[str] = field(default_factory=lambda: ["clamp"])
    """Interventions to sweep: clamp (set active features to the `--scale` value), zero, scale (multiply
    them by it)."""
    n_features: list[int] | None = None
    """Top-n of the ranked features per point (default: 20, or all explicit ids)."""
    scales: list[float] = field(default_factory=lambda: [-20.0])
    """Clamp values (clamp mode) or factors (scale mode); zero mode ignores them."""
    clamp_unit: str | None = None
    """Clamp mode: `absolute` (`--scale` is the clamp value) or `typical` (`--scale` × each feature's mean active
    activation); default: the preset's `clamp_unit`, else absolute."""
    controls: list[str] = field(default_factory=lambda: list(CONTROLS))
    """Control points beside each point: random-features, random-direction (`none` or an empty list: none)."""
    seed: int = 0
    """Seed of the random-direction rotation (random features are drawn, seeded, at selection)."""
    gates: list[str] = field(default_factory=lambda: ["none"])
    """Gates to sweep for clamp points: none (static), dsg (Muhamed et al.'s ρ over real tokens), window
    (max over 16-token windows; a prefix cannot dilute it), cusum (Page's CUSUM of the evidence)."""
    gate_fpr: float = DEFAULT_FPR
    """Target false-positive rate of each gate on the dev retain questions (sets its threshold)."""
    gate_prefix: int = 0
    """Calibrate each gate's τ on the dev retain questions behind this many tokens of the dilution filler
    (`--dilution-text`), so `--gate-fpr` holds for prompts that long; 0: the bare questions."""
    window_span: str = "windows"
    """Where a firing window gate edits: `windows` (only active tokens inside a passing window: text around
    the question is not edited) or `sequence` (every active token, the dsg rule)."""
    dilution: list[int] = field(default_factory=list)
    """Dilution check (`unlearn.clamp.dilution`): prefix lengths N in tokens (e.g. 0,100,400,1600) of retain
    text put before the known forget questions; each clamp point (not its controls) and the unhooked
    model are scored at every N. Empty: no check."""
    dilution_questions: int = 40
    """Known forget questions the dilution check scores (the first of the split, in file order)."""
    dilution_text: str | None = None
    """Filler text source for the dilution check (default: the preset's `select.retain_text`)."""
    split: str | None = None
    """Question split to score: dev (tuning), test (reporting) or all; default: the preset's."""
    permutations: bool | None = None
    """Letter protocol: all 24 answer orders."""
    resume: bool = False
    """Continue `run_id`, or the newest run made with the same settings (grid aside); finished points
    are skipped."""


def grid(
    modes: Sequence[str], n_features: Sequence[int], scales: Sequence[float]
) -> list[tuple[str, Mode, int, float]]:
    """(point id, mode, n, scale) in sweep order; zero mode has one point per n (its scale is moot)."""
    points: dict[str, tuple[str, Mode, int, float]] = {}
    for mode in map(check_mode, modes):
        for n in n_features:
            for scale in [0.0] if mode == "zero" else scales:
                pid = f"zero_n{n}" if mode == "zero" else f"{mode}_n{n}_s{scale:g}"
                points.setdefault(pid, (pid, mode, n, float(scale)))
    return list(points.values())


def with_gates(
    points: list[tuple[str, Mode, int, float]], gates: Sequence[str], controls: Sequence[str]
) -> list[tuple[str, Mode, int, float, str | None, str]]:
    """Each clamp point once per gate (`<id>_gate-<kind>`; `none` keeps the static id), each followed by
    its control points. Zero and scale points are static only, and zero ablation gets no controls: it is
    the null edit the paper reports, and its controls would only repeat it."""
    out = []
    for gate in gates:
        for pid, mode, n, scale in points:
            if gate != "none" and mode != "clamp":
                continue
            gid = pid if gate == "none" else f"{pid}_gate-{gate}"
            ctl = [] if mode == "zero" else controls
            out += [(*p, gate) for p in with_controls([(gid, mode, n, scale)], ctl)]
    return out


def check_intervene_flags(cfg: InterveneConfig) -> None:
    """Everything checkable before the model loads: modes, counts ≥ 1, finite scales, feature ids,
    the run id (re-use needs --resume or --overwrite) and a local --model path."""
    for m in cfg.modes:
        check_mode(m)
    if not cfg.modes:
        raise UnlearnError("--mode is empty: pass clamp, zero or scale")
    positive_ints(cfg.n_features, "--n-features")
    if cfg.n_features is not None and not cfg.n_features:
        raise UnlearnError("--n-features is empty: pass counts such as 10,20,50")
    check_gates(cfg.gates, finite_float(cfg.gate_fpr, "--gate-fpr"))
    if cfg.window_span not in ("windows", "sequence"):
        raise UnlearnError(f"--window-span must be windows or sequence, got {cfg.window_span!r}.")
    positive_ints(cfg.dilution, "--dilution", minimum=0)
    positive_int(cfg.gate_prefix, "--gate-prefix", minimum=0)
    positive_int(cfg.dilution_questions, "--dilution-questions")
    finite_floats(cfg.scales, "--scale")
    if not cfg.scales:
        raise UnlearnError("--scale is empty: pass values such as -20 or -5,-20,-50")
    positive_int(cfg.limit, "--limit")
    positive_int(cfg.batch_size, "--batch-size")
    checks.feature_ids(cfg.feature_ids)
    if cfg.shard is not None:
        check_shard_flags("intervene", cfg.run_id, parse_shard(cfg.shard), resume=cfg.resume,
                          overwrite=cfg.overwrite, settings=sweep_settings(cfg))  # fmt: skip
    else:
        check_new_run("intervene", cfg.run_id, resume=cfg.resume, overwrite=cfg.overwrite)
    check_model_path(cfg.model)


def _open_run(cfg: InterveneConfig, identity: dict, config: dict):
    """`--run-id` (resumed with --resume if the settings match), the newest matching run with a bare
    `--resume`, else a fresh one; see `unlearn.results.open_run`."""
    run_id, resume = cfg.run_id, cfg.resume
    if resume and not run_id:
        run_id = find_resumable("intervene", identity)
        if run_id:
            log.info("resuming %s", run_id)
        else:
            log.info("no earlier run with these settings; starting a new one")
            resume = False
    if run_id and resume and not (results_dir() / "intervene" / run_id).exists():
        resume = False  # --run-id NEW --resume: nothing to resume yet
    if run_id and (state := shard_state(results_dir() / "intervene" / run_id)) is not None:
        raise UnlearnError(f"run {run_id} is sharded ({state.count} shards): continue it with "
                           f"--shard I/{state.count} --resume, or pass a new --run-id")  # fmt: skip
    return open_run(
        "intervene", identity, config=config, run_id=run_id, resume=resume, overwrite=cfg.overwrite
    )


def sweep_settings(cfg: InterveneConfig) -> dict:
    """The sweep's keys of config.json, known from the flags alone (every shard of a run must agree)."""
    sizes = cfg.n_features or ([len(cfg.feature_ids)] if cfg.feature_ids else [20])
    return {"grid": {"modes": cfg.modes, "n_features": sizes, "scales": cfg.scales},
            "controls": cfg.controls, "seed": cfg.seed, "gates": cfg.gates, "gate_fpr": cfg.gate_fpr,
            "window_span": cfg.window_span, **({"gate_prefix": cfg.gate_prefix} if cfg.gate_prefix else {}),
            "dilution": {"prefix_tokens": cfg.dilution, "questions": cfg.dilution_questions,
                         "text": cfg.dilution_text}}  # fmt: skip


def write_summary(run_dir: Path) -> None:
    """`summary.csv` from the point files in the folder (after each point, and by a sharded run's last shard)."""
    write_table(run_dir / "summary.csv", summary_frame(run_dir))


def summary_frame(run_dir: Path) -> pd.DataFrame:
    """One row per evaluated state (baseline first): pooled and per-task accuracy, deltas vs baseline."""
    rows = []
    base = read_json(run_dir / "baseline.json") if (run_dir / "baseline.json").exists() else None
    entries = [("baseline", {"mode": "none", "metrics": base})] if base else []
    entries += [(f.stem, read_json(f)) for f in sorted((run_dir / "points").glob("*.json"))]
    for pid, p in entries:
        block = EvalBlock.from_dict(p["metrics"])
        row = {"point": pid, **{k: p.get(k) for k in ("mode", "n_features", "scale", "control", "clamp_unit")},
               "forget_acc": block.forget_acc, "retain_acc": block.retain_acc,
               "edit_rel_norm": (p.get("edit") or {}).get("rel_norm"),
               "edited_frac": (p.get("edit") or {}).get("edited_frac")}  # fmt: skip
        if base:
            b = EvalBlock.from_dict(base)
            row["d_forget"] = _diff(block.forget_acc, b.forget_acc)
            row["d_retain"] = _diff(block.retain_acc, b.retain_acc)
        row.update({f"{s.role}:{s.task}": s.acc for s in block.scores})
        rows.append(row)
    return pd.DataFrame(rows)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def point_table(title: str, block: EvalBlock, base: EvalBlock | None) -> Table:
    """Per task (and pooled): accuracy now with its 95% bootstrap interval and, against the unhooked
    model, its value and the change (red where it moved the wrong way: forget up, retain down); the
    report adds paired intervals on the changes."""
    table = Table(title=title)
    for col in ("task", "role", "n", "acc [95% CI]", "unhooked", "change")[: 6 if base else 4]:
        table.add_column(col, justify="left" if col in ("task", "role") else "right")
    before = {(s.task, s.role): s.acc for s in base.scores} if base else {}
    rows = [(s.task, s.role, str(s.n), s.acc, s.ci, before.get((s.task, s.role))) for s in block.scores]
    rows += [("pooled", "forget", "", block.forget_acc, block.forget_ci, base.forget_acc if base else None),
             ("pooled", "retain", "", block.retain_acc, block.retain_ci, base.retain_acc if base else None)]  # fmt: skip
    for task, role, n, acc, ci, b in rows:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        shown = fmt(acc) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        change = _diff(acc, b)
        style = "red" if change and ((role == "retain") == (change < 0)) else None
        extra = [fmt(b), "-" if change is None else f"{change:+.3f}"] if base else []
        table.add_row(task, role, n, shown, *extra, style=style)
    return table


def resolve_targets(cfg, setup: Setup, lm: LoadedModel, sae: nn.Module | None, selection) -> tuple:
    """(ranked feature ids, SAE, its spec, hook point) of an intervene or screen-features config
    (`feature_ids`, `sae`, `hook`): explicit ids over the selection's, `--sae` over the selection's SAE;
    checked against each other before any evaluation and before any run folder exists."""
    from unlearn.clamp.select import resolve_sae

    ranked = list(cfg.feature_ids) if cfg.feature_ids else selection.features
    if not ranked:
        raise UnlearnError("The selection is empty (no feature passed the retain threshold); "
                           "rerun select-features with a higher --retain-threshold or pass --feature-ids.")  # fmt: skip
    if sae is None:
        spec = selection.sae if selection else None
        hook = selection.hook if selection and not cfg.sae else None
        sae, sae_spec, hook = resolve_sae(setup, lm.model, spec, hook)
    else:
        sae_spec, hook = cfg.sae or "<in-memory>", cfg.hook or sae.hook_name
    d_sae = getattr(sae, "d_sae", None)
    if d_sae is not None and max(ranked) >= d_sae:
        raise UnlearnError(
            f"feature ids must lie in 0..{d_sae - 1} for SAE {sae_spec}; "
            f"got {[i for i in ranked if i >= d_sae][:5]}: pass ids this SAE has"
        )
    return ranked, sae, sae_spec, hook


def run_intervene(
    cfg: InterveneConfig,
    *,
    lm: LoadedModel | None = None,
    sae: nn.Module | None = None,
    suite=None,
    console: Console | None = None,
) -> Path:
    """Evaluate the unhooked model once, then every grid point with its clamp installed; each point's
    metrics are written as soon as it completes, and points already in the run folder are skipped."""
    from unlearn.clamp.topics import read_topics  # one selection, or several merged (dirA,dirB / bio,chem)
    from unlearn.eval.suite import weight_fingerprint

    if cfg.launcher is not None or cfg.shards is not None:  # fan out over jobs, each one shard
        from unlearn.clamp.launch import launch_sweep

        if lm is not None or sae is not None or suite is not None:
            raise UnlearnError(
                "--launcher jobs load their own model: call run_intervene without lm/sae/suite"
            )
        return launch_sweep(cfg, console=console or Console())
    console = console or Console()
    shard = parse_shard(cfg.shard) if cfg.shard is not None else None
    setup = setup_of(cfg)
    check_intervene_flags(cfg)
    selection = None if cfg.feature_ids else read_topics(cfg.features, cfg.topic)  # before the model
    lm = lm or load_model(setup)
    setup = setup.on(lm)
    preset = setup.preset  # None: generic defaults (--model alone)
    ranked, sae, sae_spec, hook = resolve_targets(cfg, setup, lm, sae, selection)
    sizes = cfg.n_features or ([len(ranked)] if cfg.feature_ids else [20])
    if max(sizes) > len(ranked):
        log.warning("only %d ranked features; larger n use all of them", len(ranked))
    points = with_gates(
        grid(cfg.modes, sorted({min(n, len(ranked)) for n in sizes}), cfg.scales), cfg.gates, cfg.controls
    )
    points = shard_points(points, shard)  # every point, or shard I/N's share
    unit = cfg.clamp_unit or setup.clamp_unit
    if unit not in CLAMP_UNITS:
        raise UnlearnError(f"--clamp-unit must be one of {', '.join(CLAMP_UNITS)}, got {unit!r}.")
    if cfg.dilution or (cfg.gate_prefix and set(cfg.gates) - {"none"}):
        filler_source(lm, cfg.dilution_text)  # no filler: say so before the known-subset pass
    if suite is None:
        from unlearn.eval.suite import eval_config_from_preset, prepare_eval

        overrides = {"protocol": cfg.protocol, "forget": cfg.forget_tasks, "retain": cfg.retain_tasks,
                     "known_only": cfg.known_only, "permutations": cfg.permutations, "limit": cfg.limit,
                     "batch_size": cfg.batch_size, "split": cfg.split}  # fmt: skip
        ecfg = eval_config_from_preset(preset, **overrides)
        if not ecfg.forget and not ecfg.retain:
            raise UnlearnError("No evaluation tasks: pass --forget-tasks and --retain-tasks (or a --preset).")
        suite = prepare_eval(lm, ecfg)  # known subsets with the unhooked model, before any hook
    eval_cfg = (
        dataclasses.asdict(suite.cfg) if dataclasses.is_dataclass(getattr(suite, "cfg", None)) else None
    )
    identity = {"command": "intervene", "preset": preset.name if preset else None, "model": lm.name,
                "sae": sae_spec, "hook": hook, "features": selection.source if selection else None,
                "topic": selection.topic if selection else None, "ranked_features": ranked, "eval": eval_cfg,
                "sae_weights": weight_fingerprint(sae), "clamp_unit": unit}  # fmt: skip
    typical, control_ids, control_typical = feature_info(
        selection, ranked, lm, sae, hook, preset, unit=unit, controls=cfg.controls, topic=cfg.topic,
        seed=cfg.seed,
    )  # fmt: skip
    if "random-features" in cfg.controls and len(control_ids or []) < len(ranked[: max(sizes)]):
        raise UnlearnError(
            "Fewer matched control features than clamped ones; pass --controls random-direction."
        )
    rotation_DD = None
    if "random-direction" in cfg.controls:
        rotation_DD = random_rotation(sae.d_in, cfg.seed, dtype=sae.W_dec.dtype, device=sae.W_dec.device)
    plan = ClampPlan(unit, typical, control_ids, control_typical, rotation_DD, cfg.seed, cfg.gate_fpr,
                     (cfg.dilution, cfg.dilution_questions, cfg.dilution_text), cfg.window_span,
                     cfg.gate_prefix)  # fmt: skip
    layer = parse_hook_name(hook).layer
    config = {"layer": layer, **sweep_settings(cfg)}
    if shard is not None:  # join the folder every shard shares; this shard's status in shards/
        own = [p[0] for p in points]
        opened = open_shard("intervene", identity, config, cfg.run_id, shard, own, on_complete=write_summary)
    else:
        opened = _open_run(cfg, identity, config)
    with opened as run, hook_layer_cache(lm.model, hook, enabled=cfg.hook_cache, store=layer_store()) as hc:
        _sweep(run.path, lm, sae, suite, points, ranked, hook, selection, plan, console,
               own_baseline=shard is not None)  # fmt: skip
        stats_file = "hook_cache.json" if shard is None else shard.file.replace(".json", ".hook_cache.json")
        write_json(run.path / stats_file, hc.stats.as_dict())  # what the shared prefix saved
    return run.path


class ClampPlan(NamedTuple):
    """How each point's clamp values and controls are made (from the selection, fixed for the run)."""

    unit: str  # "absolute" | "typical"
    typical: list[float] | None  # mean active value per ranked feature
    control_ids: list[int] | None  # frequency-matched random features, one per ranked feature
    control_typical: list[float] | None
    rotation_DD: Tensor | None  # random orthogonal map for the random-direction control
    seed: int
    gate_fpr: float  # target false-positive rate of gated points
    dilution: tuple[list[int], int, str | list[str] | None] = ([], 40, None)  # prefix N, questions, filler
    window_span: str = "windows"
    gate_prefix: int = 0  # filler tokens before each dev retain question a gate is calibrated on


def _sweep(run_dir: Path, lm, sae, suite, points, ranked, hook, selection, plan: ClampPlan, console,
           *, own_baseline: bool = False) -> None:  # fmt: skip
    """Baseline, then each grid point not yet in the folder; a point's JSON is its last file.

    `own_baseline` (a shard): score the baseline here even when the folder has one, as the unsharded run
    does (its frame, not a CSV read back, feeds `Reuse`), and write it only where it is missing."""
    unit, typical, control_ids, control_typical, rotation_DD, seed, gate_fpr, dilution, window_span, _ = plan
    dilute = Diluter(run_dir, lm, suite, *dilution, hook_name=hook) if dilution[0] else None
    calibrated_gates: dict[tuple, Gate] = {}  # a real point and its direction control share one gate
    base_frame = None  # per-question baseline: paired deltas, and the scores of questions a hook leaves alone
    if (run_dir / "baseline.json").exists() and not own_baseline:
        base = EvalBlock.from_dict(read_json(run_dir / "baseline.json"))
        if (run_dir / "questions" / "baseline.csv").exists():
            base_frame = pd.read_csv(run_dir / "questions" / "baseline.csv")
    else:
        with torch.inference_mode():
            base_out = suite.run(lm.model, desc="baseline")
        base = base_out.block
        new = not (run_dir / "baseline.json").exists()
        if getattr(base_out, "questions", None) is not None and len(base_out.questions):  # paired deltas
            if new:
                write_table(run_dir / "questions" / "baseline.csv", base_out.questions)
            base_frame = base_out.questions
        if new:
            write_json(run_dir / "baseline.json", base)
    reusable = isinstance(suite, EvalSuite) and base_frame is not None
    console.print(point_table("unhooked", base, None))
    thr = selection.retain_threshold if selection else None
    rank_by = selection.rank_by if selection else None
    for pid, mode, n, scale, control, gate_kind in points:
        path = run_dir / "points" / f"{pid}.json"
        if path.exists():
            log.info("skipping %s (done)", pid)
            continue
        feats = control_ids[:n] if control == "random-features" else ranked[:n]
        mus = (control_typical if control == "random-features" else typical) or []
        values = None
        if mode == "clamp":
            values = [scale * float(m) for m in mus[:n]] if unit == "typical" else [scale] * len(feats)
        value = torch.tensor(values, dtype=torch.float64) if unit == "typical" and mode == "clamp" else scale
        dirs = None
        if control == "random-direction":
            dirs = sae.W_dec[torch.as_tensor(feats, dtype=torch.long, device=sae.W_dec.device)] @ rotation_DD
        edit_stats, gate, record = EditStats(), None, FiringLog()
        if gate_kind != "none":
            key = (gate_kind, tuple(feats), tuple(values))
            if key not in calibrated_gates:
                raw = Gate(
                    gate_kind,
                    features=tuple(feats),
                    values=tuple(values),
                    **gate_settings(gate_kind, mus[:n], window_span),
                )
                benign = lm.preset.eval.get("benign", []) if lm.preset else []
                calibrated_gates[key] = calibrate_gate(
                    lm, sae, raw, suite, fpr=gate_fpr, hook_name=hook, benign=benign,
                    prefix_tokens=plan.gate_prefix, filler=dilution[2],
                )  # fmt: skip
            gate = calibrated_gates[key]

        def hook_for(
            log: FiringLog,
            stats: EditStats | None = None,
            feats=feats,
            value=value,
            dirs=dirs,
            gate=gate,
            mode=mode,
        ):
            if gate is None:
                return feature_edit(lm.model, sae, feats, mode, value, hook_name=hook, directions_KD=dirs,
                             stats=stats if stats is not None else EditStats())  # fmt: skip
            return gated(lm.model, sae, gate, hook_name=hook, directions_KD=dirs, record=log)

        label = lambda t, log=record: log.start(t.role)  # noqa: E731
        if reusable:  # score only the questions the hook touches (exact; `eval.suite.Reuse`)
            live = lambda on, log=record, st=edit_stats, mk=hook_for: mk(log, st) if on else mk(FiringLog())  # noqa: E731
            with torch.inference_mode():
                outcome = suite.run(lm.model, desc=pid, on_task=label, reuse=Reuse(base_frame, live, hook))
        else:
            with torch.inference_mode(), hook_for(record, edit_stats):
                outcome = suite.run(lm.model, desc=pid, on_task=label)
        if gate is not None:
            gate = with_scored_rates(gate, record, suite.cfg.split)
        if dilute is not None and control is None and mode == "clamp":
            dilute.point(pid, hook_for, gate.threshold if gate else None)
        if getattr(outcome, "questions", None) is not None and len(outcome.questions):
            write_table(run_dir / "questions" / f"{pid}.csv", outcome.questions)
        write_json(path, {"mode": mode, "scale": None if mode == "zero" else scale, "n_features": n,
                          "features": feats, "retain_threshold": thr, "rank_by": rank_by, "control": control,
                          "clamp_unit": unit, "clamp_values": values,
                          "typical_activation": [float(m) for m in mus[:n]] or None,
                          "seed": seed if control == "random-direction" else None,
                          "gate": gate.to_json() if gate else None,
                          "edit": edit_stats.as_dict() if gate is None else None, "metrics": outcome.block})  # fmt: skip
        write_summary(run_dir)
        size = edit_stats.as_dict()
        title = (f"{pid} ({len(feats)} features at {hook}; edited {size['edited_frac']:.1%} of tokens, "
                 f"mean ||Δx||/||x|| {size['rel_norm']:.3f})") if gate is None else (
                 f"{pid} ({len(feats)} features at {hook}; gate τ={gate.threshold:.3g}, "
                 f"firing rates {', '.join(f'{k} {v:.2f}' for k, v in gate.measured_fpr.items())})")  # fmt: skip
        console.print(point_table(title, outcome.block, base))
    write_summary(run_dir)


def show_intervene(cfg: InterveneConfig) -> None:
    """Run the sweep and print its summary table."""
    console = Console()
    run_dir = run_intervene(cfg, console=console)
    summary = summary_frame(run_dir)
    table = Table(title=f"intervene sweep ({run_dir})")
    for col in ("point", "forget_acc", "retain_acc", "d_forget", "d_retain"):
        table.add_column(col, justify="left" if col == "point" else "right")
    for _, r in summary.iterrows():
        cells = [r["point"]] + ["-" if pd.isna(r.get(c)) else f"{r[c]:+.3f}" if c.startswith("d_") else f"{r[c]:.3f}"
                                for c in ("forget_acc", "retain_acc", "d_forget", "d_retain")]  # fmt: skip
        table.add_row(*cells)
    console.print(table)


def _controls(text: str) -> list[str]:
    return [] if text.strip() == "none" else parse_list(text) or []


intervene_command = command(
    InterveneConfig, show_intervene,
    doc="Clamp selected SAE features during evaluation, over a grid of feature counts and scales.",
    flags={**EVAL_FLAGS, "scales": Flag("--scale", comma=True), "modes": Flag("--mode", aliases=("--modes",), comma=True),
           "gates": Flag("--gate", aliases=("--gates",), comma=True), "n_features": Flag(comma=True),
           "feature_ids": Flag(comma=True), "dilution": Flag(comma=True), "controls": Flag(comma=True, parse=_controls)},
)  # fmt: skip
