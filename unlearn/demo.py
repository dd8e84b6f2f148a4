"""`unlearn demo`: the whole experiment on one preset, in order — select, intervene, RMU, report.

The README's main job. On the embedded default it runs offline on a laptop CPU: features selected on
dev text, zero ablation, a static and a gated clamp each beside its frequency-matched random-feature
and random-direction controls, the dilution check, RMU, the reduced attack set, and a report of test-split
accuracies with bootstrap intervals.
`--quick` shrinks every step (fewer tokens, questions and RMU steps) for CI's end-to-end test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from unlearn.clamp.intervene import InterveneConfig, run_intervene
from unlearn.clamp.select import SelectConfig, run_select
from unlearn.models import load_model
from unlearn.options import Flag, command
from unlearn.report.run import ReportConfig, run_report
from unlearn.rmu.run import RMUConfig, run_rmu
from unlearn.setup import setup_of


@dataclass
class DemoConfig:
    preset: str | None = None
    """Preset to run everything on (default gemma-3-270m)."""
    model: str | None = None
    """Model instead of the preset's (`unlearn.setup`: with `preset`, its settings; alone, generic
    defaults, so `--sae` and the rest must come from somewhere)."""
    scales: list[float] | None = None
    """Clamp values swept by `intervene` (default: the preset's `demo.scales`, chosen on dev; zero
    ablation always runs beside them)."""
    n_features: list[int] | None = None
    """Numbers of clamped features swept by `intervene` (default: the preset's `demo.n_features`, else 20)."""
    gates: list[str] = field(default_factory=lambda: ["none", "window", "dsg"])
    """Static clamping, a dilution-resistant gate and the paper's ρ gate (each with its random-feature and
    random-direction controls)."""
    dilution: list[int] | None = None
    """Prefix lengths of the dilution check (default: the preset's `demo.dilution`, else 0,100,400)."""
    attacks: bool = True
    """Attack the static clamp, the window-gated clamp and RMU with the reduced set
    (`attacks.run.demo_config`: about a CPU minute per target on the embedded default); the full set is
    `unlearn attack`."""
    quick: bool = False
    """Small everything (CI's end-to-end test): ~20k tokens for selection, 40 questions per set, 10 RMU steps."""


def run_demo(cfg: DemoConfig, console: Console | None = None) -> Path:
    """Run the four commands with the preset's defaults; returns the report folder. Every number lands
    on the test halves of the question sets; the preset's clamp values and RMU settings were chosen on
    the dev halves (README, "Tuning on dev")."""
    console = console or Console()
    setup = setup_of(cfg)
    demo = setup.demo
    scales = cfg.scales or list(demo.get("scales", [-20.0]))
    n_features = cfg.n_features or list(demo.get("n_features", [20]))
    limit = 40 if cfg.quick else None
    start = time.perf_counter()
    lm = load_model(setup)
    same = {"preset": cfg.preset, "model": cfg.model}

    console.print(Rule("1/4  unlearn select-features --topic bio"))
    select = SelectConfig(**same, topics=["bio"], n_features=max(n_features),
                          **({"max_tokens": 20_000} if cfg.quick else {}))  # fmt: skip
    select_dir = run_select(select, lm=lm)
    gates = ",".join(cfg.gates)
    console.print(Rule(f"2/4  unlearn intervene --modes zero,clamp --gate {gates} (with controls)"))
    dilution = cfg.dilution or list(demo.get("dilution", [0, 100, 400]))
    sweep = InterveneConfig(**same, features=str(select_dir), modes=["zero", "clamp"],
                            n_features=n_features, scales=scales, gates=cfg.gates, limit=limit,
                            dilution=[0, 20] if cfg.quick else dilution,
                            dilution_questions=8 if cfg.quick else int(demo.get("dilution_questions", 40)))  # fmt: skip
    run_intervene(sweep, lm=lm, console=console)
    console.print(Rule("3/4  unlearn rmu-baseline"))  # trains the loaded model, then puts its weights back
    run_rmu(RMUConfig(**same, eval_limit=limit, **({"n_batches": 10} if cfg.quick else {})), lm=lm)
    if cfg.attacks:
        console.print(Rule("unlearn attack (reduced set)"))
        _attack(cfg, scales, n_features, lm, console)
    console.print(Rule("4/4  unlearn report"))
    report_dir = run_report(ReportConfig(preset=setup.name), console=console)
    console.print(
        f"[bold green]demo finished in {time.perf_counter() - start:.0f} s[/]; report: {report_dir}"
    )
    return report_dir


def _attack(cfg: DemoConfig, scales: list[float], n_features: list[int], lm, console: Console) -> None:
    """The reduced attack set on the demo's static and window-gated points and its RMU run."""
    from unlearn.attacks.run import demo_config, run_attacks
    from unlearn.results import latest_run_dir

    sweep, rmu = latest_run_dir("intervene"), latest_run_dir("rmu-baseline")
    pid = f"clamp_n{max(n_features)}_s{scales[0]:g}"
    targets = [f"intervene:{sweep}/{pid}", f"intervene:{sweep}/{pid}_gate-window", f"rmu:{rmu}"]
    run_attacks(
        demo_config(preset=cfg.preset, model=cfg.model, **({"limit": 10} if cfg.quick else {})),
        targets,
        lm=lm,
        console=console,
    )


demo_command = command(
    DemoConfig, run_demo,
    doc="Run the whole experiment: select-features, intervene (clamp and zero ablation), rmu-baseline, report.",
    flags={"scales": Flag(comma=True, aliases=("--scale",)), "n_features": Flag(comma=True),
           "gates": Flag(comma=True, aliases=("--gate",)),  # intervene's names work too
           "dilution": Flag(comma=True)},
)  # fmt: skip
