"""The attacks as steps of one run (`run.py`): each evaluates the model under its attack and adds rows."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from unlearn.attacks.direction import ablated, dominant_direction, edit_differences
from unlearn.attacks.probe import choice_activations, probe_accuracy
from unlearn.attacks.prompting import few_shot, padded, padding_text, rewritten
from unlearn.attacks.relearn import relearn_texts, relearned, trainable_names
from unlearn.attacks.state import Target, clamp_target, rmu_target
from unlearn.data import iter_texts, load_questions
from unlearn.errors import UnlearnError
from unlearn.hooks import decoder_layers

if TYPE_CHECKING:
    from unlearn.attacks.run import AttackConfig, _Runner


def build_target(cfg: AttackConfig, lm, factory: Callable | None) -> Target:
    """The unlearned state named by `cfg.target` (or a bare factory, at `--hook`-less SAE hook point)."""
    if factory is not None:
        return Target("custom", "hook", factory, lm.preset.hook_point if lm.preset else "")
    if cfg.target.startswith("rmu:"):
        return rmu_target(cfg.target.removeprefix("rmu:"))
    if cfg.target != "clamp":
        raise UnlearnError(f"Unknown --target {cfg.target!r}; use clamp or rmu:<results/rmu-baseline/RUN>.")
    from unlearn.select import read_selection, resolve_sae

    selection = read_selection(cfg.features, cfg.topic)
    sae, _, hook = resolve_sae(selection.sae, selection.hook, lm.preset, lm.model)
    return clamp_target(sae, selection.features[: cfg.n_features], cfg.mode, cfg.scale, hook=hook)


def _layer(target: Target) -> int:
    return int(target.hook.split(".")[1])


def hook_removal(r: _Runner) -> None:
    """Open weights: a hook protects nothing once removed; the row is the base model, no new computation."""
    if r.target.kind != "hook":
        return
    r.add("hook-removal", {}, r.base, {"seconds": 0.0}, note="open weights = base model")


def relearn(r: _Runner) -> None:
    cfg, lm = r.cfg, r.lm
    n_layers = len(decoder_layers(lm.model))
    layers = cfg.relearn_layers or sorted({_layer(r.target), min(_layer(r.target) + 1, n_layers - 1)})
    params = trainable_names(lm.model, layers)
    for corpus, source in (("forget", cfg.relearn_forget), ("retain", cfg.relearn_retain)):
        for k in cfg.relearn_k:
            texts = relearn_texts(source, k)
            for steps in cfg.relearn_steps:
                start = time.perf_counter()
                with r.target(lm.model), relearned(lm.model, lm.tokenizer, texts, params=params, steps=steps,
                                                   lr=cfg.relearn_lr, batch_size=cfg.relearn_batch,
                                                   max_length=cfg.relearn_max_length, seed=cfg.seed) as st:  # fmt: skip
                    outcome = r.evaluate(f"relearn {corpus} k={k} S={steps}")
                cost = {"seconds": time.perf_counter() - start, "steps": st.steps, "tokens": st.tokens}
                r.add("relearn", {"texts": corpus, "k": len(texts), "S": steps, "lr": cfg.relearn_lr}, outcome,
                      cost, losses=st.losses, layers=layers, seed=cfg.seed)  # fmt: skip


def few_shot_attack(r: _Runner) -> None:
    shots = load_questions(r.cfg.shot_source)
    random.Random(r.cfg.seed).shuffle(shots)
    shots = shots[: r.cfg.shots]
    suite = rewritten(r.suite, lambda qs: few_shot(qs, shots))
    start = time.perf_counter()
    with r.target(r.lm.model):
        outcome = r.evaluate(f"{len(shots)}-shot", suite)
    r.add("few-shot", {"shots": len(shots), "source": r.cfg.shot_source}, outcome,
          {"seconds": time.perf_counter() - start})  # fmt: skip


def padding_attack(r: _Runner) -> None:
    prefix, n = padding_text(r.lm.tokenizer, iter_texts(r.cfg.pad_source), r.cfg.pad_tokens)
    suite = rewritten(r.suite, lambda qs: padded(qs, prefix))
    start = time.perf_counter()
    with r.target(r.lm.model):
        outcome = r.evaluate(f"padding {n}", suite)
    r.add(
        "padding",
        {"tokens": n, "source": r.cfg.pad_source},
        outcome,
        {"seconds": time.perf_counter() - start},
    )


def direction_attack(r: _Runner) -> None:
    lm, target = r.lm, r.target
    start = time.perf_counter()
    texts = list(iter_texts(r.cfg.direction_text, limit_docs=max(8, r.cfg.direction_tokens // 16)))
    diff_ND = edit_differences(
        lm.model, lm.tokenizer, texts, target, target.hook, max_tokens=r.cfg.direction_tokens
    )
    d_D, explained = dominant_direction(diff_ND)
    with target(lm.model), ablated(lm.model, target.hook, d_D[:, None]):
        outcome = r.evaluate("direction ablation")
    r.add("direction", {"basis": "top singular vector", "hook": target.hook}, outcome,
          {"seconds": time.perf_counter() - start, "tokens": int(diff_ND.shape[0])},
          explained=explained)  # fmt: skip
    if target.decoder_basis_DK is not None:
        start = time.perf_counter()
        with target(lm.model), ablated(lm.model, target.hook, target.decoder_basis_DK):
            outcome = r.evaluate("decoder-span ablation")
        r.add("direction", {"basis": f"W_dec span ({target.decoder_basis_DK.shape[1]})", "hook": target.hook},
              outcome, {"seconds": time.perf_counter() - start})  # fmt: skip


def probe_attack(r: _Runner) -> None:
    cfg, lm = r.cfg, r.lm
    forget = [t for t in r.suite.tasks if t.role == "forget"]
    train_src = cfg.probe_train or [src.replace("@test", "@dev") for src in r.suite.cfg.forget]
    train = [q for s in train_src for q in load_questions(s, limit=cfg.limit)]
    test = [q for t in forget for q in t.scored]
    if {(q.source, q.index) for q in train} & {
        (getattr(q, "source", None), getattr(q, "index", None)) for q in test
    }:
        raise UnlearnError(
            "Probe training questions overlap the test questions; pass --probe-train <source>@dev."
        )
    n_layers = len(decoder_layers(lm.model))
    L = _layer(r.target)
    layers = cfg.probe_layers or sorted({max(0, L - 3), L, min(n_layers - 1, L + 3)})
    start = time.perf_counter()
    y_tr, y_te = np.array([q.answer for q in train]), np.array([q.answer for q in test])
    accs = {}
    for state in ("base", "unlearned"):
        if state == "base":
            x_tr, x_te = (choice_activations(lm.model, lm.tokenizer, qs, layers) for qs in (train, test))
        else:
            with r.target(lm.model):
                x_tr, x_te = (choice_activations(lm.model, lm.tokenizer, qs, layers) for qs in (train, test))
        accs[state] = [
            probe_accuracy(x_tr[:, :, i], y_tr, x_te[:, :, i], y_te, seed=cfg.seed)
            for i in range(len(layers))
        ]
    per_layer = [(layer, accs["base"][i], accs["unlearned"][i]) for i, layer in enumerate(layers)]
    r.add("probe", {"layers": layers, "train": len(train), "test": len(test)}, None,
          {"seconds": time.perf_counter() - start, "examples": 4 * (len(train) + len(test))},
          probe={"per_layer": per_layer, "chance": 0.25})  # fmt: skip


ATTACK_FUNCS: dict[str, Callable[[_Runner], None]] = {
    "hook-removal": hook_removal,
    "relearn": relearn,
    "few-shot": few_shot_attack,
    "padding": padding_attack,
    "direction": direction_attack,
    "probe": probe_attack,
}
