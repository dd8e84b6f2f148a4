"""`unlearn train-sae`: collect activations (`activations`), train (`sae_training`), save the SAE as a
SAELens folder and report its held-out quality (`sae_quality`)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from unlearn.checks import dtype_named, finite_float, positive_int, writable_dir
from unlearn.errors import UnlearnError
from unlearn.hooks import hook_width
from unlearn.models import load_model
from unlearn.options import Flag, RunFlags, command
from unlearn.results import check_new_run, open_run, read_json, write_json, write_table
from unlearn.sae.activations import collect_activations, mixed_texts
from unlearn.sae.loaders import load_sae
from unlearn.sae.quality import evaluate_sae
from unlearn.sae.training import SAETrainConfig, check_train_config, train_sae
from unlearn.setup import setup_of

log = logging.getLogger(__name__)


# --- the run and its command ---------------------------------------------------------------------------------


@dataclass
class TrainSAEConfig(RunFlags):
    """One `unlearn train-sae` run: where activations come from, how to train, where the SAE goes."""

    hook: str | None = None
    """Hook point, e.g. `blocks.6.hook_resid_post`; default: the preset's."""
    sources: list[str] = field(default_factory=lambda: ["offline:bio-forget", "offline:retain"])
    """Training corpora (`unlearn.data.iter_texts` sources), interleaved document by document."""
    eval_sources: list[str] = field(
        default_factory=lambda: ["offline:bio-forget-heldout", "offline:retain-heldout"]
    )
    """Held-out corpora for the quality metrics."""
    tokens: int = 300_000
    """Activation tokens to collect (BOS and padding excluded); training makes `epochs` passes over them."""
    max_length: int = 128
    """Tokens per window (documents are joined, then cut into windows that each start with BOS)."""
    forward_batch: int = 16
    """Windows per model forward."""
    sink_ratio: float | None = None
    """Leave out massive-activation tokens (residual norm above this x the window's median; the gates'
    `SINK_RATIO` is 4) from training and evaluation, as BOS is: long windows hold a few, ~10x a text
    token's norm (Sun et al., arXiv 2402.17762), which would dominate the MSE. None keeps every token."""
    eval_tokens: int | None = 100_000
    """At most this many held-out tokens for variance explained, L0 and dead latents (None: all)."""
    ce_tokens: int = 8192
    """Held-out tokens for the spliced-in CE (three full forwards each, the slow part)."""
    train: SAETrainConfig = field(default_factory=SAETrainConfig)
    """Optimisation hyper-parameters."""
    save_dtype: str = "float16"
    """dtype of the saved weights (float16 keeps a shipped SAE small; metrics use the saved weights)."""
    activations: Path | None = None
    """Float16 activation cache file (outside the repo) to reuse/resume between tries; None: in memory."""
    out: Path | None = None
    """Also copy the SAE folder (+ training.json, metrics.json) here, e.g. unlearn/shipped/saes/<name>."""


SAVE_DTYPES = ("float16", "float32", "bfloat16")


def check_train_sae_flags(cfg: TrainSAEConfig) -> None:
    """Counts ≥ 1, a finite positive learning rate, a sink ratio > 1, a plain new run id, a writable --out:
    before the model loads (a huge --lr still diverges; the SAE's weights are checked before it is saved)."""
    for name in ("tokens", "max_length", "forward_batch", "eval_tokens", "ce_tokens"):
        positive_int(getattr(cfg, name), f"--{name.replace('_', '-')}")
    for name in ("width", "batch_size", "k"):
        positive_int(getattr(cfg.train, name, None), f"--{name.replace('_', '-')}")
    for name in ("lr", "l0_coeff", "target_l0", "preact_coeff", "threshold_lr_mult"):
        if getattr(cfg.train, name, None) is not None:
            finite_float(getattr(cfg.train, name), f"--{name.replace('_', '-')}")
    for name in ("lr", "epochs"):
        if finite_float(getattr(cfg.train, name), f"--{name}") <= 0:
            raise UnlearnError(f"--{name} must be > 0, got {getattr(cfg.train, name)}")
    if cfg.sink_ratio is not None and finite_float(cfg.sink_ratio, "--sink-ratio") <= 1:
        raise UnlearnError(
            f"--sink-ratio must be > 1 (a multiple of the window's median token norm), got {cfg.sink_ratio}"
        )
    check_new_run("train-sae", cfg.run_id, overwrite=cfg.overwrite)
    if cfg.out is not None:
        writable_dir(cfg.out, "--out")


def run_train_sae(cfg: TrainSAEConfig, *, progress: bool = True) -> Path:
    """Collect activations, train, save (SAELens folder), evaluate the saved SAE; returns the run folder."""
    if not cfg.sources:
        raise UnlearnError("pass at least one training corpus with --source")
    dtype_named(cfg.save_dtype, "--save-dtype", SAVE_DTYPES)
    setup = setup_of(cfg)
    check_train_sae_flags(cfg)
    if cfg.tokens < cfg.train.batch_size:
        raise UnlearnError(f"--tokens ({cfg.tokens}) must be at least --batch-size ({cfg.train.batch_size})")
    point = setup.hook_for()
    if point is None:
        raise UnlearnError(
            f"--model {cfg.model!r} alone names no hook point: pass --hook blocks.<L>.hook_resid_post "
            "(or --preset P for P's)"
        )
    hook = point.name
    lm = load_model(setup)
    d_in = hook_width(lm.model, hook)
    check_train_config(cfg.train, d_in)
    model_dtype = str(next(lm.model.parameters()).dtype).removeprefix("torch.")
    config = {
        "command": "train-sae",
        "preset": setup.preset_name,
        "model": lm.source,
        "hook": hook,
        "d_in": d_in,
        **{k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("preset", "model", "hook")},
    }
    with open_run("train-sae", config, run_id=cfg.run_id, overwrite=cfg.overwrite) as run:
        run_dir = run.path

        t0 = time.perf_counter()
        key = {
            "model": lm.source,
            "hook": hook,
            "sources": cfg.sources,
            "max_length": cfg.max_length,
            "dtype": model_dtype,
            "windows": "joined",  # token_windows' layout; older caches cut documents one by one
            **({"sink_ratio": cfg.sink_ratio} if cfg.sink_ratio is not None else {}),
        }
        acts_ND = collect_activations(
            lm.model,
            lm.tokenizer,
            hook,
            mixed_texts(cfg.sources),
            n_tokens=cfg.tokens,
            max_length=cfg.max_length,
            batch_size=cfg.forward_batch,
            cache=cfg.activations,
            cache_key=key,
            sink_ratio=cfg.sink_ratio,
            progress=progress,
        )
        t1 = time.perf_counter()
        result = train_sae(acts_ND, cfg.train, progress=progress)
        t2 = time.perf_counter()
        sae_dir = result.sae.to_sae(
            result.scale, hook_name=hook, dtype=dtype_named(cfg.save_dtype, "--save-dtype", SAVE_DTYPES)
        ).save(run_dir / "sae")
        write_table(run_dir / "losses.csv", pd.DataFrame(result.history))

        saved = load_sae(sae_dir, dtype=torch.float32, device=lm.model.device)
        held_out = evaluate_sae(
            lm.model,
            lm.tokenizer,
            saved,
            hook,
            mixed_texts(cfg.eval_sources),
            max_length=cfg.max_length,
            ce_tokens=cfg.ce_tokens,
            max_tokens=cfg.eval_tokens,
            sink_ratio=cfg.sink_ratio,
            progress=progress,
        )
        metrics = {
            **held_out,
            "eval_sources": cfg.eval_sources,
            "dead_frac_train": result.dead_frac,
            "train_last": result.history[-1],
        }
        training = {
            **config,
            "activation_tokens": len(acts_ND),
            "train_tokens": result.tokens,
            "steps": result.steps,
            "input_scale": result.scale,
            "model_dtype": model_dtype,
            "seconds": {"activations": t1 - t0, "training": t2 - t1, "evaluation": time.perf_counter() - t2},
        }
        write_json(sae_dir / "training.json", training)
        write_json(sae_dir / "metrics.json", metrics)
        write_json(run_dir / "metrics.json", metrics)
        if cfg.out:
            shutil.copytree(sae_dir, cfg.out, dirs_exist_ok=True)
            log.info("SAE copied to %s", cfg.out)
    return run_dir


def metrics_table(metrics: dict) -> Table:
    table = Table(title="SAE quality on held-out text")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("variance explained", "variance_explained", "{:.3f}"),
        ("L0", "l0", "{:.1f}"),
        ("dead latents (held-out)", "dead_frac", "{:.1%}"),
        ("dead latents (training)", "dead_frac_train", "{:.1%}"),
        ("CE clean", "ce_clean", "{:.4f}"),
        ("CE with SAE", "ce_sae", "{:.4f}"),
        ("delta CE", "delta_ce", "{:+.4f}"),
        ("CE zero-ablated", "ce_zero", "{:.4f}"),
        ("CE loss recovered", "ce_loss_recovered", "{:.3f}"),
        ("tokens (CE tokens)", "tokens", "{}"),
    ]
    for label, key, fmt in rows:
        if key in metrics:
            value = fmt.format(metrics[key])
            table.add_row(label, value + (f" ({metrics['ce_tokens']})" if key == "tokens" else ""))
    return table


def show_train_sae(cfg: TrainSAEConfig) -> None:
    """`unlearn train-sae`: train, then print the held-out quality table."""
    run_dir = run_train_sae(cfg)
    console = Console()
    console.print(metrics_table(read_json(run_dir / "metrics.json")))
    console.print(f"SAE: {run_dir / 'sae'}" + (f"  (copied to {cfg.out})" if cfg.out else ""))


train_sae_command = command(
    TrainSAEConfig, show_train_sae,
    doc="Train a JumpReLU (or TopK) SAE on activations at a hook point; report its held-out quality.",
    flags={"train": Flag(nested=True), "sources": Flag("--source", help="Training corpus (repeat to mix)."),
           "eval_sources": Flag("--eval-source", help="Held-out corpus (repeat to mix).")},
)  # fmt: skip
