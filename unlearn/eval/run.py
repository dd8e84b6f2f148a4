"""`unlearn eval`: the shared evaluator run on a model as it is (or with an RMU run's weights loaded),
written to `results/eval/<run-id>/` and shown as a table."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from rich.console import Console

from unlearn.checks import positive_int
from unlearn.errors import UnlearnError
from unlearn.eval.suite import Protocol, eval_config_from_preset, prepare_eval, protocol_name
from unlearn.options import Flag, RunFlags, command
from unlearn.presets import Preset
from unlearn.results import EvalBlock, check_new_run, open_run, read_json
from unlearn.setup import setup_of


@dataclass
class EvalRunConfig(RunFlags):
    tasks: list[str] | None = None
    """Question sources, comma-separated (wmdp-bio,mmlu:college_biology,offline:bio,file.jsonl; default:
    the preset's forget + retain lists). Roles: the preset's lists, else `forget` for wmdp-* and
    offline:bio, `other` for anything else."""
    protocol: Protocol | None = None
    """letter, cloze or lm-eval (default: the preset's)."""
    permutations: bool = False
    """Letter protocol: score all 24 choice orders."""
    known_only: bool = False
    """Only questions the base model knows (cached per model)."""
    chat_template: bool | None = None
    """Wrap prompts in the tokenizer's chat template (default: the preset's)."""
    batch_size: int | None = None
    """Sequences per forward pass (default: the preset's `eval.batch_size`, else 16)."""
    limit: int | None = None
    """At most this many questions per source."""
    rmu: str | None = None
    """An `rmu-baseline` run folder whose trained weights are loaded into the model after the known
    subsets are computed (so they describe the base model)."""


def check_eval_flags(cfg: EvalRunConfig) -> Path | None:
    """Everything checkable without the model: protocol, counts, run id, the --rmu run; returns its weights file."""
    if cfg.protocol is not None and cfg.protocol not in get_args(Protocol):
        raise UnlearnError(f"Unknown protocol {cfg.protocol!r}; use letter, cloze or lm-eval.")
    positive_int(cfg.batch_size, "--batch-size")
    positive_int(cfg.limit, "--limit")
    check_new_run("eval", cfg.run_id, overwrite=cfg.overwrite)
    if cfg.rmu:
        from unlearn.rmu.weights import completed_rmu_weights

        return completed_rmu_weights(cfg.rmu)
    return None


def _roles(tasks: list[str], preset: Preset | None) -> dict[str, list[str]]:
    ev = preset.eval if preset else {}
    roles: dict[str, list[str]] = {"forget": [], "retain": [], "other": []}
    for task in tasks:
        if task in ev.get("forget", []) or task.startswith("wmdp-") or task == "offline:bio":
            roles["forget"].append(task)
        elif task in ev.get("retain", []) or task.startswith("offline:retain"):
            roles["retain"].append(task)
        else:
            roles["other"].append(task)
    return roles


def run_eval(cfg: EvalRunConfig) -> Path:
    """Evaluate one model state and write `results/eval/<run-id>/` (config, metrics, questions.csv)."""
    from unlearn.models import load_model

    setup = setup_of(cfg)
    rmu_weights = check_eval_flags(cfg)
    preset = setup.preset
    lm = load_model(setup)
    overrides = dict(
        protocol=cfg.protocol,
        permutations=cfg.permutations,
        known_only=cfg.known_only,
        chat_template=cfg.chat_template,
        batch_size=cfg.batch_size,
        limit=cfg.limit,
    )
    if cfg.tasks:
        overrides |= _roles(cfg.tasks, preset)
    eval_cfg = eval_config_from_preset(preset, **overrides)
    suite = prepare_eval(lm, eval_cfg)  # known subsets from the unmodified model
    if rmu_weights is not None:
        from unlearn.rmu.weights import load_rmu_weights

        load_rmu_weights(lm.model, rmu_weights)
    identity = {
        "command": "eval",
        "preset": preset.name if preset else None,
        "model": lm.source,
        "protocol": protocol_name(eval_cfg),
        "tasks": [t.name for t in suite.tasks],
        "rmu": cfg.rmu,
        "eval": eval_cfg,
        "chat_template": suite.chat_template,
    }
    with open_run("eval", identity, run_id=cfg.run_id, overwrite=cfg.overwrite) as run:
        outcome = suite.run(lm.model, desc=f"eval {lm.name}")
        run.write_table("questions.csv", outcome.questions)
        run.write_json("metrics.json", outcome.block)  # the result itself: last before the completion record
    return run.path


def scores_table(block: EvalBlock, title: str = "Evaluation"):
    from rich.table import Table

    table = Table(title=f"{title} ({block.protocol}, {block.subset} questions)")
    for col in ("task", "role", "n", "acc", "acc_norm"):
        table.add_column(col, justify="left" if col in ("task", "role") else "right")
    fmt = lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"  # noqa: E731
    for s in block.scores:
        table.add_row(s.task, s.role, str(s.n), fmt(s.acc), fmt(s.acc_norm))
    for role in ("forget", "retain"):
        table.add_row(f"pooled {role}", role, "", fmt(getattr(block, f"{role}_acc")), "", style="bold")
    return table


def show_eval(cfg: EvalRunConfig) -> None:
    """`unlearn eval`: evaluate and print the per-task table."""
    run_dir = run_eval(cfg)
    console = Console()
    console.print(scores_table(EvalBlock.from_dict(read_json(run_dir / "metrics.json"))))
    console.print(f"Results: {run_dir}")


eval_command = command(
    EvalRunConfig, show_eval, doc="Score a model on forget/retain question sets; writes results/eval/<run-id>/.",
    flags={"tasks": Flag(comma=True)},
)  # fmt: skip
