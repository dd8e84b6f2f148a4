"""`unlearn rmu-baseline`: RMU (Li et al., arXiv 2403.03218) as the baseline the paper compares with.

Defaults come from the preset's `rmu` section (Farrell et al.'s best gemma-2-2b-it point: layer 3,
c=400, α=100, 300 batches of 3, lr 5e-5, padding masked); every value can be overridden. The training
step lives in `unlearn.rmu.train`. A run writes `results/rmu-baseline/<run-id>/`: `config.json`,
`losses.csv` + `loss.png`, `weights.safetensors` (only the trained matrices), `training.json` (did the
forget loss converge: `unlearn.rmu.train.convergence`), and `metrics.json` = `{"before": block, "after":
block, "training": ...}` from the shared evaluator. `c` is absolute (`steering_coeff`, the papers' values)
or relative to the layer's mean residual norm (`steering_coeff_rel`; both are recorded). `rmu.weights.load_rmu_weights` puts the trained
matrices into a freshly loaded model (`unlearn eval --rmu <run>`). A failed run (non-finite loss,
interrupt) leaves `config.json` and a `FAILED` marker only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from unlearn.checks import finite_float, positive_int
from unlearn.errors import UnlearnError
from unlearn.hooks import decoder_layers, text_config
from unlearn.models import LoadedModel, load_model
from unlearn.options import Flag, RunFlags, command
from unlearn.results import (
    check_new_run,
    open_run,
    read_json,
    write_bytes,
    write_json,
    write_table,
)
from unlearn.rmu.train import (
    DEFAULT_PARAM_PATTERN,
    RMUTrainer,
    StepLosses,
    convergence,
    forget_target_scale,
    mean_resid_norm,
    steering_vectors,
    text_batches,
    tokenize,
)
from unlearn.rmu.weights import WEIGHTS_FILE, save_rmu_weights
from unlearn.setup import Setup, setup_of

log = logging.getLogger(__name__)


@dataclass
class RMUConfig(RunFlags):
    layer: int | None = None
    """L: the forget/retain losses are taken at the output of `layers[L]`."""
    update_layers: list[int] | None = None
    """Layers whose matching parameter is trained; default L-2, L-1, L (as in Li et al.)."""
    param_pattern: str | None = None
    """Regex (with `{layer}`) naming the trained parameter of each update layer; default `mlp.down_proj.weight`."""
    steering_coeff: float | None = None
    """c: the forget activations are pushed toward c·u, u a fixed random unit vector per forget source."""
    steering_coeff_rel: float | None = None
    """c relative to the residual: c = rel × mean per-token norm at `layers[L]` output on the first retain
    batches (BOS and padding excluded), measured before training. An explicit `steering_coeff` wins."""
    resid_norm: float | None = None
    """Recorded, not set: the measured mean residual norm when `steering_coeff_rel` was used."""
    alpha: float | None = None
    """α: weight of the retain loss."""
    lr: float | None = None
    """AdamW learning rate (eps 1e-6, no weight decay)."""
    n_batches: int | None = None
    """Training steps; each takes one forget and one retain batch (fewer if the corpora run out)."""
    batch_size: int | None = None
    """Texts per forget batch and per retain batch."""
    max_length: int | None = None
    """Tokens per text (longer texts are truncated on the right; upstream uses 512)."""
    mask_padding: bool | None = None
    """Farrell et al.'s loss: squared errors summed over real tokens / #real tokens; off = plain mean."""
    mask_bos: bool | None = None
    """Also leave BOS out of both losses (implies the masked form). On Gemma 3 BOS's residual norm is
    5-20x a token's, so an unmasked mean is mostly BOS: the forget loss cannot fall and α guards BOS."""
    forget_source: list[str] | None = None
    """Forget corpora (`unlearn.data.iter_texts` sources); several alternate per step, each with its own u."""
    retain_source: list[str] | None = None
    """Retain corpora: one, or one per forget source."""
    min_len: int = 0
    """Texts of at most this many characters are skipped (upstream's `min_len`; drops WikiText's blank lines)."""
    seed: int = 42
    """Seed of the random control vectors (Farrell et al.'s sweep used 42)."""
    eval: bool = True
    """Evaluate before and after with the shared evaluator (the preset's tasks and protocol)."""
    eval_limit: int | None = None
    """At most this many questions per task (quick runs)."""
    extra: dict = field(default_factory=dict)
    """Overrides passed to `eval_config_from_preset` (e.g. protocol, known_only)."""


def _as_list(value) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def resolve_config(cfg: RMUConfig, setup: Setup | None = None) -> RMUConfig:
    """Fill every unset field from the setup's `rmu` section (the preset's; none with `--model` alone);
    the settings nothing supplies are one clear error naming their flags."""
    setup = setup or setup_of(cfg)
    defaults = setup.rmu
    keys = {"forget_source": "forget_text", "retain_source": "retain_text"}
    filled, missing = {}, []
    for f in ("layer", "alpha", "lr", "n_batches", "batch_size", "max_length",
              "mask_padding", "mask_bos", "forget_source", "retain_source"):  # fmt: skip
        value = getattr(cfg, f)
        if value is None:
            value = defaults.get(keys.get(f, f), False if f in ("mask_padding", "mask_bos") else None)
        if value is None:
            missing.append(f"--{f.replace('_', '-')}")
        filled[f] = _as_list(value) if f in keys and value is not None else value
    coeff = _coeff_fields(cfg, defaults)
    if coeff is None:
        missing.append("--steering-coeff (or --steering-coeff-rel)")
    if missing:
        where = (f"preset {setup.preset.name!r} has no rmu setting for it" if setup.preset
                 else f"--model {cfg.model!r} without --preset uses no preset's RMU settings")  # fmt: skip
        raise UnlearnError(
            f"RMU needs {', '.join(missing)}: {where}. Pass {'it' if len(missing) == 1 else 'them'}, or "
            "--preset P to train with P's RMU settings (e.g. --preset gemma-2-2b-it --model M)."
        )
    out = dataclasses.replace(cfg, preset=setup.preset_name, **filled, **coeff)
    if out.update_layers is None:
        out.update_layers = [i for i in (out.layer - 2, out.layer - 1, out.layer) if i >= 0]
    out.param_pattern = out.param_pattern or defaults.get("param_pattern", DEFAULT_PARAM_PATTERN)
    if len(out.retain_source) not in (1, len(out.forget_source)):
        raise UnlearnError("Pass one --retain-source, or one per --forget-source.")
    if out.n_batches < 1 or out.batch_size < 1 or out.max_length < 1:
        raise UnlearnError("--n-batches, --batch-size and --max-length must be positive.")
    return out


def _coeff_fields(cfg: RMUConfig, defaults: dict) -> dict | None:
    """An explicit absolute c, else an explicit relative one, else the preset's (relative first); None
    when nothing supplies c."""
    if cfg.steering_coeff is not None and cfg.steering_coeff_rel is not None:
        raise UnlearnError("Pass --steering-coeff (absolute c) or --steering-coeff-rel, not both.")
    if cfg.steering_coeff is not None or cfg.steering_coeff_rel is not None:
        return {}
    if defaults.get("steering_coeff_rel") is not None:
        return {"steering_coeff_rel": float(defaults["steering_coeff_rel"])}
    if defaults.get("steering_coeff") is not None:
        return {"steering_coeff": float(defaults["steering_coeff"])}
    return None


NORM_BATCHES = 4
"""Retain batches the residual norm for a relative c is measured on."""


def absolute_coeff(lm: LoadedModel, cfg: RMUConfig, retain: list[list[list[str]]]) -> RMUConfig:
    """Turn `steering_coeff_rel` into the absolute c (recording the measured norm); else unchanged."""
    if cfg.steering_coeff_rel is None:
        return cfg
    inputs = [
        tokenize(lm.tokenizer, texts, cfg.max_length, lm.model.device) for texts in retain[0][:NORM_BATCHES]
    ]
    norm = mean_resid_norm(lm.model, cfg.layer, inputs, lm.tokenizer.bos_token_id)
    log.info(
        "residual norm at layers[%d]: %.4g -> c = %.4g x %.4g", cfg.layer, norm, cfg.steering_coeff_rel, norm
    )
    return dataclasses.replace(cfg, steering_coeff=cfg.steering_coeff_rel * norm, resid_norm=norm)


def training_summary(cfg: RMUConfig, d_model: int, losses) -> dict:
    """The convergence block of metrics.json (see `rmu_train.convergence`), with both forms of c."""
    scale = forget_target_scale(cfg.steering_coeff, d_model, bool(cfg.mask_padding or cfg.mask_bos))
    summary = convergence(list(losses["forget_loss"]), scale, len(cfg.forget_source))
    summary |= {"steering_coeff": cfg.steering_coeff, "steering_coeff_rel": cfg.steering_coeff_rel,
                "resid_norm": cfg.resid_norm, "steps": len(losses)}  # fmt: skip
    if not summary["converged"]:
        log.warning(
            "RMU did NOT converge: final forget loss %.4g is %.0f%% of the initial %.4g (%.3g x the target "
            "scale ‖c·u‖²); raise --lr or --n-batches, or lower --steering-coeff(-rel).",
            summary["forget_loss_final"], 100 * summary["final_over_initial"],
            summary["forget_loss_initial"], summary["final_over_target"],
        )  # fmt: skip
    return summary


def add_loss_ratios(losses, summary: dict):
    """Per-step forget loss over its initial value and over the target scale (columns of losses.csv)."""
    losses["forget_over_initial"] = losses["forget_loss"] / summary["forget_loss_initial"]
    losses["forget_over_target"] = losses["forget_loss"] / summary["target_scale"]
    return losses


def load_batches(cfg: RMUConfig) -> tuple[list[list[list[str]]], list[list[list[str]]], int]:
    """Forget and retain batches per forget source, and the number of steps they allow.

    Step `i` uses source `i % S` and that source's batch `i // S`, as upstream cycles topics."""
    n_src = len(cfg.forget_source)
    per_source = math.ceil(cfg.n_batches / n_src)
    forget = [text_batches(s, cfg.batch_size, per_source, cfg.min_len) for s in cfg.forget_source]
    retain_by_src = {
        s: text_batches(s, cfg.batch_size, per_source, cfg.min_len) for s in set(cfg.retain_source)
    }
    retain = [retain_by_src[cfg.retain_source[i % len(cfg.retain_source)]] for i in range(n_src)]
    steps = 0
    while steps < cfg.n_batches and all(steps // n_src < len(b[steps % n_src]) for b in (forget, retain)):
        steps += 1
    if steps == 0:
        raise UnlearnError(
            f"No training text: forget {cfg.forget_source} or retain {cfg.retain_source} gave no batch. "
            "For the gated bio forget corpus pass a local .jsonl with a `text` field (--forget-source)."
        )
    if steps < cfg.n_batches:
        log.warning(
            "corpora hold only %d of the %d requested batches; training %d steps", steps, cfg.n_batches, steps
        )
    return forget, retain, steps


def train_rmu(
    lm: LoadedModel,
    cfg: RMUConfig,
    forget: list[list[list[str]]],
    retain: list[list[list[str]]],
    steps: int,
    on_step: Callable[[int, StepLosses], None] | None = None,
) -> tuple[RMUTrainer, list[StepLosses]]:
    """Train `lm.model` in place for `steps` steps (a resolved config); returns the trainer and losses. A
    failed step leaves the model as it found it (`RMUTrainer.restore`)."""
    model = lm.model
    n_layers = len(decoder_layers(model))
    if not 0 <= cfg.layer < n_layers:
        raise UnlearnError(
            f"--layer {cfg.layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1})."
        )
    d_model = text_config(model).hidden_size
    trainer = RMUTrainer(
        model, layer=cfg.layer, update_layers=cfg.update_layers, param_pattern=cfg.param_pattern,
        control_vecs=steering_vectors(d_model, cfg.steering_coeff, len(forget), cfg.seed),
        alpha=cfg.alpha, lr=cfg.lr, mask_padding=cfg.mask_padding,
        mask_bos_id=lm.tokenizer.bos_token_id if cfg.mask_bos else None,
    )  # fmt: skip
    history = []
    try:
        for i in range(steps):
            topic, b = i % len(forget), i // len(forget)
            f_in = tokenize(lm.tokenizer, forget[topic][b], cfg.max_length, model.device)
            r_in = tokenize(lm.tokenizer, retain[topic][b], cfg.max_length, model.device)
            history.append(trainer.step(f_in, r_in, topic))
            if on_step:
                on_step(i, history[-1])
    except BaseException:
        trainer.restore()
        raise
    finally:
        trainer.finish()
    return trainer, history


def check_rmu_flags(cfg: RMUConfig) -> None:
    """Counts ≥ 1 and finite coefficients, before any model loads."""
    for name in ("n_batches", "batch_size", "max_length", "eval_limit"):
        positive_int(getattr(cfg, name), f"--{name.replace('_', '-')}")
    for name in ("steering_coeff", "alpha", "lr"):
        if getattr(cfg, name) is not None:
            finite_float(getattr(cfg, name), f"--{name.replace('_', '-')}")
    if cfg.lr is not None and cfg.lr <= 0:
        raise UnlearnError(f"--lr must be > 0, got {cfg.lr}")


def loss_plot(losses) -> bytes:
    """Forget and α-weighted retain loss per step (PNG, Agg canvas, no global pyplot state)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    for ax, col, colour in zip(
        fig.subplots(1, 2), ("forget_loss", "retain_loss"), ("tab:red", "tab:blue"), strict=True
    ):
        ax.plot(losses["step"], losses[col], c=colour, lw=1.2)
        ax.set_xlabel("step")
        ax.set_title(col.replace("_", " ") + (" (×α)" if col == "retain_loss" else ""))
        if (losses[col] > 0).all():
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _eval_suite(lm: LoadedModel, cfg: RMUConfig):
    from unlearn.eval.suite import eval_config_from_preset, prepare_eval

    # Known subset by default, as `intervene` scores, so the report can set RMU beside the SAE points.
    overrides = {"known_only": True, "limit": cfg.eval_limit, **cfg.extra}
    return prepare_eval(lm, eval_config_from_preset(lm.preset, **overrides))


def run_rmu(cfg: RMUConfig, *, lm: LoadedModel | None = None, progress: bool = True) -> Path:
    """Train RMU on a freshly loaded model, evaluate before and after, and write the run folder.

    A given `lm` (the demo's, so it loads once) is trained in place and has its original weights back
    when this returns or fails."""
    import pandas as pd

    setup = setup_of(cfg)
    cfg = resolve_config(cfg, setup)
    check_rmu_flags(cfg)
    check_new_run("rmu-baseline", cfg.run_id, overwrite=cfg.overwrite)
    borrowed = lm is not None
    lm = lm or load_model(setup)
    forget, retain, steps = load_batches(cfg)  # fail on missing corpora before any slow work
    cfg = absolute_coeff(lm, cfg, retain)
    identity = {"command": "rmu-baseline", **dataclasses.asdict(cfg), "model": setup.model.source,
                "steps": steps}  # fmt: skip
    with open_run("rmu-baseline", identity, run_id=cfg.run_id, overwrite=cfg.overwrite) as run:
        run_dir = run.path
        suite = _eval_suite(lm, cfg) if cfg.eval else None  # known subset from the unhooked model
        before = suite.run(lm.model, desc="before RMU") if suite else None
        with _progress(progress, steps) as on_step:
            trainer, history = train_rmu(lm, cfg, forget, retain, steps, on_step)
        try:
            losses = pd.DataFrame(
                [(i, h.forget, h.retain, cfg.forget_source[i % len(forget)]) for i, h in enumerate(history)],
                columns=["step", "forget_loss", "retain_loss", "source"],
            )
            training = training_summary(cfg, text_config(lm.model).hidden_size, losses)
            write_table(run_dir / "losses.csv", add_loss_ratios(losses, training))
            write_json(run_dir / "training.json", training)
            write_bytes(run_dir / "loss.png", loss_plot(losses))
            meta = {"model": str(lm.source), "preset": str(setup.preset_name), "layer": str(cfg.layer)}
            save_rmu_weights(run_dir / WEIGHTS_FILE, trainer.changed_weights(), meta)
            if suite:
                after = suite.run(lm.model, desc="after RMU")
                write_table(run_dir / "questions_before.csv", before.questions)
                write_table(run_dir / "questions_after.csv", after.questions)
                write_json(
                    run_dir / "metrics.json",
                    {"before": before.block, "after": after.block, "training": training},
                )
        finally:
            if borrowed:  # the caller's model: its original weights back
                trainer.restore()
    log.info("RMU run written to %s", run_dir)
    return run_dir


class _progress:
    """A rich progress bar showing both losses; a no-op callback when disabled."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self) -> Callable[[int, StepLosses], None] | None:
        if not self.enabled:
            return None
        from unlearn.progress import progress_bar

        self.bar = progress_bar("RMU", "losses")
        self.bar.__enter__()
        task = self.bar.add_task("rmu", total=self.total, losses="")

        def on_step(i: int, h: StepLosses) -> None:
            self.bar.update(task, advance=1, losses=f"forget {h.forget:.4g}  retain {h.retain:.4g}")

        return on_step

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


def show_rmu(cfg: RMUConfig) -> None:
    """`unlearn rmu-baseline`: train, then print the before/after table and whether RMU converged."""
    run_dir = run_rmu(cfg)
    console = Console()
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        console.print(before_after_table(read_json(metrics)))
    training = read_json(run_dir / "training.json")
    if not training["converged"]:
        console.print(
            f"[bold red]RMU did not converge[/]: final forget loss is {training['final_over_initial']:.0%} of "
            f"the initial ({training['criterion']}); this baseline is weak."
        )
    console.print(f"RMU run: {run_dir}  (evaluate later with: unlearn eval --rmu {run_dir})")


rmu_baseline_command = command(
    RMUConfig, show_rmu, skip=("resid_norm",), flags={"update_layers": Flag(comma=True)},
    doc="RMU baseline (Li et al. 2024; Farrell et al.'s variant with --mask-padding), evaluated before/after.",
)  # fmt: skip


def before_after_table(metrics: dict) -> Table:
    """Per-task accuracy before and after RMU, then the pooled forget/retain rows."""
    before = {s["task"]: s for s in metrics["before"]["scores"]}
    after = {s["task"]: s for s in metrics["after"]["scores"]}
    table = Table(title="RMU: accuracy before → after")
    for col in ("task", "role", "n", "before", "after", "Δ"):
        table.add_column(col, justify="left" if col in ("task", "role") else "right")
    rows = [(t, s["role"], str(s["n"]), s["acc"], after.get(t, {}).get("acc")) for t, s in before.items()]
    rows += [(f"pooled {r}", r, "", metrics["before"][f"{r}_acc"], metrics["after"][f"{r}_acc"])
             for r in ("forget", "retain")]  # fmt: skip
    for task, role, n, b, a in rows:
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        delta = f"{a - b:+.3f}" if a is not None and b is not None else "–"
        table.add_row(
            task, role, n, fmt(b), fmt(a), delta, style="bold" if task.startswith("pooled") else None
        )
    return table
