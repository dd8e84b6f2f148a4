"""Tune the embedded preset's RMU on the dev halves of the question sets (the test halves stay unseen).

Loads the model and prepares the evaluation once (the known subset comes from the untouched model), then
for every grid point: trains RMU (`unlearn.rmu.train_rmu`, c from `--c-rel` × the layer's mean residual
norm unless `--c` is given), scores `offline:bio@dev` (forget) and `offline:retain@dev` (retain) with the
preset's protocol on the known subset, and puts the original weights back (`RMUTrainer.restore`).

Selection rule: the largest forget drop among points whose retain accuracy stays ≥ `--min-retain` (0.95)
of the untouched model's (relative, known subset); if none does, the point with the best
`forget drop - retain drop` is printed and flagged as a trade-off. Each point is appended to
`<results>/rmu-sweep/<name>.csv` as it finishes, so a killed sweep keeps what it measured.

    nice -n 10 python bench/rmu_sweep.py --layer 2,4 --c-rel 0.5,1 --alpha 10,100 --lr 1e-3 --steps 40
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import time

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from unlearn.eval.suite import eval_config_from_preset, prepare_eval
from unlearn.hooks import text_config
from unlearn.models import load_model
from unlearn.paths import results_dir
from unlearn.presets import DEFAULT_PRESET, get_preset
from unlearn.results import write_table
from unlearn.rmu.run import (
    RMUConfig,
    absolute_coeff,
    load_batches,
    resolve_config,
    train_rmu,
    training_summary,
)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default=DEFAULT_PRESET)
    p.add_argument("--layer", type=ints, default=[2])
    p.add_argument("--c-rel", type=floats, default=[1.0], help="c relative to the residual norm")
    p.add_argument("--c", type=floats, default=[], help="absolute c instead of --c-rel")
    p.add_argument("--alpha", type=floats, default=[100.0])
    p.add_argument("--lr", type=floats, default=[1e-3])
    p.add_argument("--steps", type=ints, default=[40])
    p.add_argument("--batch-size", type=ints, default=[4])
    p.add_argument("--max-length", type=ints, default=[64])
    p.add_argument("--mask-padding", action="store_true", help="Farrell et al.'s masked loss")
    p.add_argument("--mask-bos", action="store_true", help="leave BOS out of both losses")
    p.add_argument(
        "--param-pattern",
        default=None,
        help="regex of trained parameters per layer ({layer}); e.g. also the MLP's output norm, which on "
        "Gemma 3 caps how far down_proj alone can move the residual",
    )
    p.add_argument("--forget", default="offline:bio@dev")
    p.add_argument("--retain", default="offline:retain@dev")
    p.add_argument("--eval-limit", type=int, default=None, help="at most N questions per task")
    p.add_argument("--min-retain", type=float, default=0.95, help="retain after / before must reach this")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--name", default="sweep", help="CSV name under <results>/rmu-sweep/")
    return p.parse_args(argv)


def grid(args) -> list[dict]:
    coeffs = [("steering_coeff", c) for c in args.c] or [("steering_coeff_rel", r) for r in args.c_rel]
    axes = (args.layer, coeffs, args.alpha, args.lr, args.steps, args.batch_size, args.max_length)
    return [
        {"layer": L, key: c, "alpha": a, "lr": lr, "n_batches": n, "batch_size": b, "max_length": t}
        for L, (key, c), a, lr, n, b, t in itertools.product(*axes)
    ]


def select(rows: pd.DataFrame, min_retain: float) -> tuple[pd.Series, bool]:
    """The chosen point and whether it meets the retain floor (else: the best forget-minus-retain drop)."""
    ok = rows[rows["retain_rel"] >= min_retain]
    if len(ok):
        return ok.loc[ok["forget_drop"].idxmax()], True
    return rows.loc[(rows["forget_drop"] - rows["retain_drop"]).idxmax()], False


def sweep_table(rows: pd.DataFrame, base: dict) -> Table:
    t = Table(
        title=f"RMU sweep (dev, known subset): base forget {base['forget']:.3f} / retain {base['retain']:.3f}"
    )
    cols = ["layer", "c_rel", "c", "alpha", "lr", "steps", "bs", "len", "forget", "retain", "retain_rel",
            "loss_ratio", "converged", "train_s", "eval_s"]  # fmt: skip
    for col in cols:
        t.add_column(col, justify="right")
    for _, r in rows.iterrows():
        t.add_row(*(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    return t


def main(argv=None) -> None:
    args = parse_args(argv)
    console = Console(width=200)
    torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    base_cfg = RMUConfig(
        preset=args.preset,
        eval=False,
        mask_padding=args.mask_padding or None,
        mask_bos=args.mask_bos or None,
        param_pattern=args.param_pattern,
    )
    lm = load_model(args.preset)
    d_model = text_config(lm.model).hidden_size
    ev = eval_config_from_preset(preset, forget=[args.forget], retain=[args.retain], known_only=True,
                                 limit=args.eval_limit)  # fmt: skip
    suite = prepare_eval(lm, ev)
    t0 = time.perf_counter()
    before = suite.run(lm.model, desc="dev, untouched").block
    console.print(f"untouched: forget {before.forget_acc:.3f}  retain {before.retain_acc:.3f}  "
                  f"({time.perf_counter() - t0:.0f} s per evaluation)")  # fmt: skip
    base = {"forget": before.forget_acc, "retain": before.retain_acc}
    out = results_dir() / "rmu-sweep" / f"{args.name}.csv"
    rows = []
    for point in grid(args):
        cfg = resolve_config(dataclasses.replace(base_cfg, **point))
        forget, retain, steps = load_batches(cfg)
        cfg = absolute_coeff(lm, cfg, retain)
        t0 = time.perf_counter()
        trainer, history = train_rmu(lm, cfg, forget, retain, steps)
        train_s = time.perf_counter() - t0
        losses = pd.DataFrame({"forget_loss": [h.forget for h in history]})
        summary = training_summary(cfg, d_model, losses)
        t0 = time.perf_counter()
        after = suite.run(lm.model, desc=f"dev, {point}").block
        eval_s = time.perf_counter() - t0
        trainer.restore()
        rows.append({
            "layer": cfg.layer, "c_rel": cfg.steering_coeff_rel if cfg.steering_coeff_rel else math.nan,
            "c": cfg.steering_coeff, "alpha": cfg.alpha, "lr": cfg.lr, "steps": steps, "bs": cfg.batch_size,
            "len": cfg.max_length, "params": cfg.param_pattern, "mask": bool(cfg.mask_padding), "mask_bos": bool(cfg.mask_bos), "forget": after.forget_acc,
            "retain": after.retain_acc, "forget_drop": base["forget"] - after.forget_acc,
            "retain_drop": base["retain"] - after.retain_acc, "retain_rel": after.retain_acc / base["retain"],
            "loss_ratio": summary["final_over_initial"], "converged": summary["converged"],
            "train_s": train_s, "eval_s": eval_s,
        })  # fmt: skip
        console.print(rows[-1])
        write_table(out, pd.DataFrame(rows))
    frame = pd.DataFrame(rows)
    console.print(sweep_table(frame, base))
    best, meets = select(frame, args.min_retain)
    rule = (
        f"retain_rel >= {args.min_retain}" if meets else f"NO point reaches retain_rel >= {args.min_retain}"
    )
    console.print(f"chosen ({rule}; best {'forget drop' if meets else 'forget drop - retain drop'}):")
    console.print(best.to_dict())
    console.print(f"table: {out}")


if __name__ == "__main__":
    main()
