"""`unlearn demo`: the whole experiment on one preset, in order — select, intervene, RMU, report.

The README's main job. On the embedded default it runs offline on a laptop CPU; `--quick` shrinks every
step (fewer tokens, questions and RMU steps) for CI's end-to-end test.
"""

from __future__ import annotations

import dataclasses
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
    scales: list[float] = field(default_factory=lambda: [-5.0, -20.0])
    """Clamp values swept by `intervene` (zero ablation is always run beside them)."""
    ratio: bool = True
    """Also rank the same counters by forget/retain ratio and sweep those features (clamp only)."""
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
    select = SelectConfig(preset=cfg.preset, topics=["bio"], **({"max_tokens": 20_000} if cfg.quick else {}))
    select_dir = run_select(select, lm=lm)
    if cfg.ratio:
        console.print(Rule("1b/4  unlearn select-features --topic bio --rank-by ratio --counters-from …"))
        ratio = dataclasses.replace(select, rank_by="ratio", counters_from=str(select_dir))
        ratio_dir = run_select(ratio, lm=lm)
    console.print(Rule("2/4  unlearn intervene --modes clamp,zero"))
    sweep = InterveneConfig(preset=cfg.preset, features=str(select_dir), modes=["zero", "clamp"],
                            n_features=cfg.n_features, scales=cfg.scales, limit=limit)  # fmt: skip
    run_intervene(sweep, lm=lm, console=console)
    if cfg.ratio:
        console.print(Rule("2b/4  unlearn intervene --features <ratio selection> --modes clamp"))
        run_intervene(
            dataclasses.replace(sweep, features=str(ratio_dir), modes=["clamp"]), lm=lm, console=console
        )
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
    scales: str = typer.Option("-5,-20", help="Clamp values for intervene, comma-separated."),
    n_features: str = typer.Option("20", help="Feature counts for intervene, comma-separated."),
    ratio: bool = typer.Option(True, help="Also sweep the features ranked by forget/retain ratio."),
    quick: bool = typer.Option(False, help="Shrink every step (smoke test)."),
) -> None:
    """Run the whole experiment: select-features, intervene (clamp and zero ablation), rmu-baseline, report."""
    run_demo(
        DemoConfig(
            preset=preset,
            scales=[float(s) for s in scales.split(",")],
            n_features=[int(n) for n in n_features.split(",")],
            ratio=ratio,
            quick=quick,
        )
    )
