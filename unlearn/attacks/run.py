"""`unlearn attack`: every attack on one unlearned state, written to `results/attack/<run-id>/`.

Rows: per attack, forget/retain accuracy after it and the recovered fraction (`recovery.py`) with a paired
bootstrap interval; costs (wall seconds, optimizer steps, tokens, examples) and seeds beside each. The
model is checked to be bit-identical (weight fingerprint) after every attack. The run folder follows the
other commands' lifecycle (`results.open_run`: `RUNNING`, then `complete.json`, or `FAILED`).

`run_attacks(cfg, targets, lm=lm)` attacks several states of one loaded model with one prepared suite
and one base evaluation (what `unlearn demo` calls, with `demo_config()` / `DEMO_ATTACKS`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from unlearn.attacks.recovery import recovered_fraction
from unlearn.attacks.state import Target
from unlearn.errors import UnlearnError
from unlearn.eval.hook_cache import HookLayerCache, layer_store
from unlearn.eval.suite import EvalOutcome, EvalSuite, Reuse
from unlearn.models import LoadedModel
from unlearn.options import Flag, RunFlags, command
from unlearn.setup import setup_of
from unlearn.stats import bootstrap_ci

log = logging.getLogger(__name__)

ATTACKS = ("hook-removal", "relearn", "few-shot", "padding", "direction", "probe")
DEMO_ATTACKS = ("hook-removal", "few-shot", "direction", "relearn")
"""The demo's reduced attack set (no probes; one relearning size, few steps: `demo_config`). No padding:
the demo's dilution check already scores both hook targets behind 100 tokens of retain text (its N = 100,
on more questions), and `unlearn attack` runs it on any target."""


@dataclass
class AttackConfig(RunFlags):
    target: str = "clamp"
    """`intervene:<intervene run folder>/<point id>` (the hook that point was scored with),
    `rmu:<run folder or id>`, or `clamp` (top features of a select-features run, clamped)."""
    features: str | None = None
    """select-features run folder or features.json (default: the latest run)."""
    topic: str | None = None
    """`clamp` target: topic of the selection (default: its first)."""
    n_features: int = 20
    """`clamp` target: top-n selected features clamped."""
    mode: str = "clamp"
    """`clamp` target: clamp, zero or scale, as in intervene."""
    scale: float = -20.0
    """`clamp` target: clamp value (clamp mode) or factor (scale mode)."""
    attacks: list[str] = field(default_factory=lambda: list(ATTACKS))
    """Any of: hook-removal, relearn, few-shot, padding, direction, probe."""
    forget_tasks: list[str] | None = None
    """Test questions whose accuracy the method lowers (default: the preset's forget sets, `@test`)."""
    retain_tasks: list[str] | None = None
    """Side-effect questions (default: the preset's retain sets, `@test`)."""
    known_only: bool = True
    """Score only questions the base model knows."""
    limit: int | None = None
    """At most this many questions per source (a quick run)."""
    batch_size: int | None = None
    """Sequences per forward pass (default: the preset's `eval.batch_size`, else 16)."""
    hook_cache: bool = True
    """`run_attacks`: the hook targets at one hook point share the computation up to its layer (exact:
    the same logits bit for bit; `unlearn.eval.hook_cache`); --no-hook-cache runs every pass in full."""
    relearn_k: list[int] = field(default_factory=lambda: [10, 100])
    """Numbers of relearning texts (each run twice: forget-topic texts and unrelated retain texts)."""
    relearn_steps: list[int] = field(default_factory=lambda: [10])
    """Relearning optimizer steps (each count run at every k)."""
    relearn_lr: float = 1e-5
    """AdamW learning rate. On the embedded Gemma 3 270M (2 layers fully fine-tuned, batch 4, clamp
    hook in place) 1e-4 *raised* the loss on 10 retain texts within 5 steps (8.5 → 13.5 nats/token,
    measured before/after on the same texts); hence 1e-5. Every row records its loss before and after."""
    relearn_corpora: list[str] = field(default_factory=lambda: ["forget", "retain"])
    """Which relearning corpora to run: forget-topic texts (`relearn_forget`), unrelated texts
    (`relearn_retain`), or both."""
    relearn_layers: list[int] | None = None
    """Layers whose MLP and attention matrices are fine-tuned (default: the edited layer and the next)."""
    relearn_forget: str = "qa:offline:bio@dev"
    """Forget-topic texts, disjoint from the test questions (`qa:<questions>`: solved dev questions; or a
    text source such as offline:bio-forget)."""
    relearn_retain: str = "offline:retain"
    """Unrelated texts for relearning (the retain corpus)."""
    relearn_batch: int = 4
    """Relearning texts per optimizer step."""
    relearn_max_length: int = 64
    """Tokens per relearning text (longer ones are cut)."""
    shots: int = 5
    """Solved retain questions prepended to each test question (few-shot)."""
    shot_source: str = "offline:retain@dev"
    """Questions the few-shot examples are drawn from."""
    pad_tokens: int = 100
    """Unrelated tokens prepended to each test question (padding)."""
    pad_source: str = "offline:retain"
    """Text source of the padding."""
    direction_text: str = "offline:bio-forget"
    """Forget text the edit direction is estimated on."""
    direction_tokens: int = 2048
    """Edited forget tokens the direction is estimated from (at most)."""
    direction_min_rel: float = 0.2
    """Weight edits (RMU): a token counts as edited when its activation moved by ≥ this fraction of its
    norm (hook edits: exactly the tokens the hook changed)."""
    direction_control: bool = True
    """Also project the direction out of the base model (what the projection costs by itself)."""
    direction_ablation: str = "mean"
    """`mean`: set the direction's component to the base model's mean on the direction text (mean
    ablation); `zero`: remove it (Łucki et al.'s directional ablation)."""
    direction_span: bool = True
    """SAE edits: also project out the whole span of the clamped decoder rows."""
    probe_layers: list[int] | None = None
    """Residual layers for probes (default: three around the edited layer)."""
    probe_train: list[str] | None = None
    """Questions the probes are fitted on (default: the forget sets' `@dev` halves)."""
    seed: int = 0
    """Seed of text order, shots and probes."""


def _test_split(sources: list[str]) -> list[str]:
    return [s if "@" in s else f"{s}@test" for s in sources]


def _role_values(outcome: EvalOutcome, role: str) -> np.ndarray:
    frame = outcome.questions
    if frame is None or not len(frame):
        return np.zeros(0)
    rows = frame[frame["role"] == role]
    if "known" in rows and rows["known"].notna().all():  # the known subset, as every other table
        rows = rows[rows["known"].astype(str).str.lower().isin(["true", "1", "1.0"])]
    col = "frac_correct" if "frac_correct" in rows else "correct"
    return rows[col].to_numpy(dtype=np.float64)


def _acc(values: np.ndarray) -> dict | None:
    return bootstrap_ci(values)._asdict() if values.size else None


class _Runner:
    """Shared state of one attack run: the model, the suite, and the base / unlearned outcomes."""

    def __init__(
        self,
        lm: LoadedModel,
        suite: EvalSuite,
        target: Target,
        cfg: AttackConfig,
        console: Console,
        base: EvalOutcome | None = None,
    ):
        self.lm, self.suite, self.target, self.cfg, self.console = lm, suite, target, cfg, console
        self.rows: list[dict] = []
        start = time.perf_counter()
        if base is None:
            with torch.inference_mode():
                base = suite.run(lm.model, desc="base")
        self.base = base
        base_s = time.perf_counter() - start
        start = time.perf_counter()
        with torch.inference_mode():
            if target.kind == "hook" and target.decoder_basis_DK is not None:  # an SAE edit at target.hook
                # only the questions it touches are scored, the rest are the base's (exact: `Reuse`)
                reuse = Reuse(base.questions, lambda _: target(lm.model), target.hook)
                self.unlearned = suite.run(lm.model, desc=target.name, reuse=reuse)
            else:
                with target(lm.model):
                    self.unlearned = suite.run(lm.model, desc=target.name)
        self.add("base", {}, self.base, {"seconds": base_s})
        self.add("unlearned", {}, self.unlearned, {"seconds": time.perf_counter() - start})

    def add(self, attack: str, setting: dict, outcome: EvalOutcome | None, cost: dict, **extra) -> dict:
        """Append a row: accuracies after the attack and the recovered fraction of each role's gap."""
        row = {"attack": attack, "setting": setting, "cost": cost, **extra}
        for role in ("forget", "retain"):
            values = _role_values(outcome, role) if outcome else np.zeros(0)
            b, u = _role_values(self.base, role), _role_values(self.unlearned, role)
            rec = (
                recovered_fraction(b, u, values, seed=self.cfg.seed)
                if values.size and b.size == values.size
                else None
            )
            row[role], row[f"{role}_recovered"] = _acc(values), rec._asdict() if rec else None
        self.rows.append(row)
        forget = row["forget"]
        log.info("%s %s: forget %s (%s)", attack, setting, f"{forget['value']:.3f}" if forget else "-", cost)
        return row

    def evaluate(self, desc: str, suite: EvalSuite | None = None) -> EvalOutcome:
        with torch.inference_mode():
            return (suite or self.suite).run(self.lm.model, desc=desc)


def check_attacks(cfg: AttackConfig) -> None:
    unknown = [a for a in cfg.attacks if a not in ATTACKS]
    if unknown:
        raise UnlearnError(f"Unknown attacks {unknown}; use any of: {', '.join(ATTACKS)}.")
    if cfg.direction_ablation not in ("mean", "zero"):
        raise UnlearnError(f"--direction-ablation must be mean or zero, got {cfg.direction_ablation!r}.")


def prepare_suite(cfg: AttackConfig, lm: LoadedModel) -> EvalSuite:
    """The test questions (the preset's forget/retain sets at `@test` unless given), known subsets from
    the untouched model."""
    from unlearn.eval.suite import eval_config_from_preset, prepare_eval

    ev = lm.preset.eval if lm.preset else {}
    forget = cfg.forget_tasks or _test_split(list(ev.get("forget", [])))
    retain = cfg.retain_tasks or _test_split(list(ev.get("retain", [])))
    ecfg = eval_config_from_preset(lm.preset, forget=forget, retain=retain, known_only=cfg.known_only,
                                   limit=cfg.limit, batch_size=cfg.batch_size)  # fmt: skip
    if not ecfg.forget:
        raise UnlearnError("No forget questions: pass --forget-tasks (e.g. offline:bio@test) or a --preset.")
    return prepare_eval(lm, ecfg)


def run_attack(
    cfg: AttackConfig,
    *,
    lm: LoadedModel | None = None,
    suite: EvalSuite | None = None,
    unlearned: Target | Callable | None = None,
    base: EvalOutcome | None = None,
    console: Console | None = None,
) -> Path:
    """Run `cfg.attacks` on one unlearned state and write `results/attack/<run-id>/`.

    The state is `unlearned` (a Target or a bare context-manager factory) or `cfg.target`
    (`state.target_from_spec`); `base` is the untouched model's outcome on `suite` when already known."""
    from unlearn.attacks import steps
    from unlearn.eval.suite import weight_fingerprint
    from unlearn.models import load_model
    from unlearn.results import open_run

    console = console or Console()
    setup = setup_of(cfg)
    check_attacks(cfg)
    lm = lm or load_model(setup)
    suite = suite or prepare_suite(cfg, lm)
    target = unlearned if isinstance(unlearned, Target) else steps.build_target(cfg, lm, unlearned)
    fingerprint = weight_fingerprint(lm.model)
    eval_cfg = dataclasses.asdict(suite.cfg) if dataclasses.is_dataclass(suite.cfg) else None
    identity = {"command": "attack", "preset": lm.preset.name if lm.preset else None, "model": lm.name,
                "target": target.spec or (cfg.target if unlearned is None else target.name),
                "target_name": target.name, "target_kind": target.kind, "hook": target.hook,
                "attacks": list(cfg.attacks), "eval": eval_cfg, "seed": cfg.seed,
                "weights": fingerprint}  # fmt: skip
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in identity and k != "target"}
    config = {**settings, "target_info": target.info, "source": str(lm.source),
              "tasks": [t.name for t in suite.tasks]}  # fmt: skip
    start = time.perf_counter()
    with open_run("attack", identity, config=config, run_id=cfg.run_id, overwrite=cfg.overwrite) as run:
        runner = _Runner(lm, suite, target, cfg, console, base=base)
        for attack in cfg.attacks:
            steps.ATTACK_FUNCS[attack](runner)
            if weight_fingerprint(lm.model) != fingerprint:
                raise RuntimeError(f"attack {attack} left the model modified")
        run.write_json("metrics.json", {"target": target.name, "kind": target.kind, "spec": target.spec,
                                        "rows": runner.rows, "wall_seconds": time.perf_counter() - start})  # fmt: skip
    console.print(attack_table(runner.rows, f"Attacks on {target.name} ({target.kind})"))
    return run.path


def demo_config(**overrides) -> AttackConfig:
    """The demo's reduced attack set (`DEMO_ATTACKS`): hook removal, 5-shot, the direction from 256
    edited tokens (no base control, no decoder span) and relearning on k = 10 forget-topic texts for 5
    steps (the full set: `unlearn attack`). Measured on Gemma 3 270M, 2 shared CPU cores, `limit` 20,
    one static clamp target, before these cuts (512 direction tokens, both relearning corpora): 253 s
    wall, of which relearning 153 s, direction 44 s, few-shot and padding 15 s each."""
    base = {"attacks": list(DEMO_ATTACKS), "relearn_k": [10], "relearn_steps": [5], "relearn_corpora": ["forget"],
            "direction_tokens": 256, "direction_control": False, "direction_span": False, "limit": 40}  # fmt: skip
    return AttackConfig(**{**base, **overrides})


def run_attacks(
    cfg: AttackConfig,
    targets: list[str | Target],
    *,
    lm: LoadedModel | None = None,
    suite: EvalSuite | None = None,
    console: Console | None = None,
) -> list[Path]:
    """`run_attack` for each target (`--target` strings or Targets) on one loaded model: the suite is
    prepared and the base model evaluated once. One run folder per target (`<run_id>-<i>` when named)."""
    from unlearn.attacks import steps
    from unlearn.models import load_model

    setup = setup_of(cfg)
    check_attacks(cfg)
    lm = lm or load_model(setup)
    suite = suite or prepare_suite(cfg, lm)
    with torch.inference_mode():
        base = suite.run(lm.model, desc="base")
    # every spec is resolved before any attack runs: a bad one fails before the work
    built = [
        t if isinstance(t, Target) else steps.build_target(dataclasses.replace(cfg, target=t), lm, None)
        for t in targets
    ]
    hooks = Counter(t.hook for t in built if t.kind == "hook")
    shared = (
        HookLayerCache(lm.model, hooks.most_common(1)[0][0], store=layer_store())
        if hooks and cfg.hook_cache
        else None
    )
    paths = []
    for i, (t, target) in enumerate(zip(targets, built, strict=True)):
        one = dataclasses.replace(
            cfg, run_id=f"{cfg.run_id}-{i}" if cfg.run_id and len(targets) > 1 else cfg.run_id
        )
        if isinstance(t, str):
            one.target = t
        # a weights target runs outside the cache (its weights are not the ones the entries were made with)
        use = shared is not None and target.kind == "hook" and target.hook == shared.hook_name
        with shared.installed() if use else contextlib.nullcontext():
            paths.append(run_attack(one, lm=lm, suite=suite, unlearned=target, base=base, console=console))
    if shared is not None:
        shared.clear()
        log.info("hook-layer cache at %s across targets: %s", shared.hook_name, shared.stats.as_dict())
    return paths


def _fmt(cell: dict | None, pct: bool = True) -> str:
    if not cell:
        return "–"
    k = 100 if pct else 1
    return f"{cell['value'] * k:.1f} [{cell['low'] * k:.1f}, {cell['high'] * k:.1f}]" if pct else (
        f"{cell['value']:.2f} [{cell['low']:.2f}, {cell['high']:.2f}]")  # fmt: skip


def attack_table(rows: list[dict], title: str) -> Table:
    """Per attack: forget / retain accuracy (%), recovered fraction of the forget gap, cost."""
    table = Table(title=title)
    for col in ("attack", "setting", "forget %", "retain %", "recovered (forget)", "cost"):
        table.add_column(col)
    for r in rows:
        setting = ", ".join(f"{k}={v}" for k, v in r["setting"].items())
        cost = ", ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}" for k, v in r["cost"].items())
        extra = r.get("note") or ""
        if "probe" in r:
            extra = "probe acc base/unlearned: " + ", ".join(
                f"L{layer} {b * 100:.0f}/{u * 100:.0f}" for layer, b, u in r["probe"]["per_layer"]
            )
        table.add_row(r["attack"], setting, _fmt(r.get("forget")), _fmt(r.get("retain")),
                      _fmt(r.get("forget_recovered"), pct=False), cost + (f" ({extra})" if extra else ""))  # fmt: skip
    return table


def show_attack(cfg: AttackConfig) -> None:
    run_dir = run_attack(cfg)
    Console().print(f"Attack results written to {run_dir}")


attack_command = command(
    AttackConfig, show_attack,
    doc="Attack an unlearned state: is the knowledge gone, or only hidden? Writes results/attack/<run-id>/.",
    flags={name: Flag(comma=True) for name in ("attacks", "forget_tasks", "retain_tasks", "relearn_k", "relearn_steps",
                                               "relearn_corpora", "relearn_layers", "probe_layers", "probe_train")},
)  # fmt: skip
