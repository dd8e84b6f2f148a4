"""`unlearn demo`: the whole experiment on one preset, in order — select, intervene, RMU, report.

The README's main job. On the embedded default it runs offline on a laptop CPU; `--quick` shrinks every
step (fewer tokens, questions and RMU steps) for CI's end-to-end test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.console import Console
from rich.rule import Rule

from unlearn.intervene import InterveneConfig, run_intervene
from unlearn.models import load_model
from unlearn.presets import DEFAULT_PRESET, get_preset
from unlearn.report import ReportConfig, run_report
from unlearn.rmu import RMUConfig, run_rmu
from unlearn.select import SelectConfig, run_select


@dataclass
class DemoConfig:
    preset: str = DEFAULT_PRESET
    """Preset to run everything on."""
    scales: list[float] = field(default_factory=lambda: [-5.0, -20.0, -50.0])
    """Clamp values swept by `intervene` (zero ablation is always run beside them)."""
    n_features: list[int] = field(default_factory=lambda: [20])
    """Numbers of clamped features swept by `intervene`."""
    quick: bool = False
    """Small everything (CI's end-to-end test): ~20k tokens for selection, 40 questions per set, 10 RMU steps."""


def run_demo(cfg: DemoConfig, console: Console | None = None) -> Path:
    """Run the four commands with the preset's defaults; returns the report folder."""
    console = console or Console()
    get_preset(cfg.preset)
    limit = 40 if cfg.quick else None
    start = time.perf_counter()
    lm = load_model(cfg.preset)

    console.print(Rule("1/4  unlearn select-features --topic bio"))
    select_dir = run_select(
        SelectConfig(preset=cfg.preset, topics=["bio"], **({"max_tokens": 20_000} if cfg.quick else {})),
        lm=lm,
    )
    console.print(Rule("2/4  unlearn intervene --modes clamp,zero"))
    run_intervene(
        InterveneConfig(
            preset=cfg.preset, features=str(select_dir), modes=["zero", "clamp"],
            n_features=cfg.n_features, scales=cfg.scales, limit=limit,
        ),
        lm=lm,
        console=console,
    )  # fmt: skip
    del lm  # RMU loads its own copy and changes its weights
    console.print(Rule("3/4  unlearn rmu-baseline"))
    run_rmu(RMUConfig(preset=cfg.preset, eval_limit=limit, **({"n_batches": 10} if cfg.quick else {})))
    console.print(Rule("4/4  unlearn report"))
    report_dir = run_report(ReportConfig(preset=cfg.preset), console=console)
    console.print(
        f"[bold green]demo finished in {time.perf_counter() - start:.0f} s[/]; report: {report_dir}"
    )
    return report_dir


def demo_command(
    preset: str = typer.Option(DEFAULT_PRESET, help="Preset to run (default: the embedded Gemma 3 270M)."),
    scales: str = typer.Option("-5,-20,-50", help="Clamp values for intervene, comma-separated."),
    n_features: str = typer.Option("20", help="Feature counts for intervene, comma-separated."),
    quick: bool = typer.Option(False, help="Shrink every step (smoke test)."),
) -> None:
    """Run the whole experiment: select-features, intervene (clamp and zero ablation), rmu-baseline, report."""
    run_demo(
        DemoConfig(
            preset=preset,
            scales=[float(s) for s in scales.split(",")],
            n_features=[int(n) for n in n_features.split(",")],
            quick=quick,
        )
    )
