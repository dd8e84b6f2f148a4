"""The attacks as steps of one run (`run.py`): each evaluates the model under its attack and adds rows."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from unlearn.attacks.direction import ablated, dominant_direction, edit_differences
from unlearn.attacks.probe import choice_activations, probe_accuracy
from unlearn.attacks.prompting import few_shot, padded, padding_text, rewritten, shot_context
from unlearn.attacks.relearn import relearn_texts, relearned, trainable_names
from unlearn.attacks.state import Target, target_from_spec
from unlearn.data import iter_texts, load_questions
from unlearn.errors import UnlearnError
from unlearn.hooks import decoder_layers, parse_hook_name

if TYPE_CHECKING:
    from unlearn.attacks.run import AttackConfig, _Runner


def build_target(cfg: AttackConfig, lm, factory: Callable | None) -> Target:
    """The unlearned state named by `cfg.target` (`target_from_spec`), or a bare factory at the preset's
    hook point."""
    if factory is not None:
        return Target("custom", "hook", factory, lm.preset.hook_point if lm.preset else "")
    return target_from_spec(cfg.target, lm, features=cfg.features, topic=cfg.topic,
                            n_features=cfg.n_features, mode=cfg.mode, scale=cfg.scale)  # fmt: skip


def _cost(start: float, *, steps: int = 0, tokens: int = 0, examples: int = 0, **extra) -> dict:
    """What an attack cost: wall seconds (its evaluation included), optimizer steps, tokens the attacker
    supplied or forwarded beyond the plain evaluation, and attacker examples (texts, shots, questions)."""
    return {"seconds": time.perf_counter() - start, "steps": steps, "tokens": tokens, "examples": examples,
            **extra}  # fmt: skip


def _prompt_tokens(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def _layer(target: Target) -> int:
    return parse_hook_name(target.hook).layer


def hook_removal(r: _Runner) -> None:
    """Open weights: a hook protects nothing once removed; the row is the base model, no new computation."""
    if r.target.kind != "hook":
        return
    r.add("hook-removal", {}, r.base, _cost(time.perf_counter()), note="open weights = base model",
          seed=None)  # fmt: skip


def relearn_layers(target: Target, n_layers: int) -> list[int]:
    """Default layers to fine-tune: for a hook, the two after its hook point, so the hook sees the base
    model's activations and decides exactly as it did (training at or before the hook moves features
    across their JumpReLU thresholds and the clamp switches on and off under the optimizer, so the loss
    rises); for RMU, its layer L and the next one, where its edit lives."""
    layer = _layer(target)
    first = layer + 1 if target.kind == "hook" else layer
    return sorted({min(first, n_layers - 1), min(first + 1, n_layers - 1)})


def relearn(r: _Runner) -> None:
    """Fine-tune with the unlearned state active (hooks and gates stay installed during training and
    evaluation and are removed after), once per text corpus × k × S; the loss on the training texts
    before and after is recorded, so a row whose fine-tuning did not fit shows it."""
    cfg, lm = r.cfg, r.lm
    n_layers = len(decoder_layers(lm.model))
    layers = cfg.relearn_layers or relearn_layers(r.target, n_layers)
    params = trainable_names(lm.model, layers)
    n_params = sum(dict(lm.model.named_parameters())[n].numel() for n in params)
    corpora = {"forget": cfg.relearn_forget, "retain": cfg.relearn_retain}
    unknown = [c for c in cfg.relearn_corpora if c not in corpora]
    if unknown:
        raise UnlearnError(f"Unknown relearning corpora {unknown}; use forget and/or retain.")
    for corpus in cfg.relearn_corpora:
        source = corpora[corpus]
        for k in cfg.relearn_k:
            texts = relearn_texts(source, k)
            for steps in cfg.relearn_steps:
                start = time.perf_counter()
                with r.target(lm.model), relearned(lm.model, lm.tokenizer, texts, params=params, steps=steps,
                                                   lr=cfg.relearn_lr, batch_size=cfg.relearn_batch,
                                                   max_length=cfg.relearn_max_length, seed=cfg.seed) as st:  # fmt: skip
                    outcome = r.evaluate(f"relearn {corpus} k={k} S={steps}")
                cost = _cost(start, steps=st.steps, tokens=st.tokens, examples=len(texts),
                             train_seconds=st.seconds)  # fmt: skip
                loss = {"before": st.loss_before, "after": st.loss_after,
                        "first_step": st.losses[0] if st.losses else None,
                        "last_step": st.losses[-1] if st.losses else None}  # fmt: skip
                r.add("relearn", {"texts": corpus, "source": source, "k": len(texts), "S": steps,
                                  "lr": cfg.relearn_lr}, outcome, cost, losses=st.losses, loss=loss,
                      layers=layers, trained_params=n_params, seed=cfg.seed)  # fmt: skip


def few_shot_attack(r: _Runner) -> None:
    shots = load_questions(r.cfg.shot_source)
    random.Random(r.cfg.seed).shuffle(shots)
    shots = shots[: r.cfg.shots]
    suite = rewritten(r.suite, lambda qs: few_shot(qs, shots))
    start = time.perf_counter()
    with r.target(r.lm.model):
        outcome = r.evaluate(f"{len(shots)}-shot", suite)
    context = shot_context(shots)
    n_q = sum(len(t.questions) for t in suite.tasks)
    r.add("few-shot", {"shots": len(shots), "source": r.cfg.shot_source}, outcome,
          _cost(start, tokens=_prompt_tokens(r.lm.tokenizer, context) * n_q, examples=len(shots)),
          seed=r.cfg.seed)  # fmt: skip


def padding_attack(r: _Runner) -> None:
    prefix, n = padding_text(r.lm.tokenizer, iter_texts(r.cfg.pad_source), r.cfg.pad_tokens)
    suite = rewritten(r.suite, lambda qs: padded(qs, prefix))
    start = time.perf_counter()
    with r.target(r.lm.model):
        outcome = r.evaluate(f"padding {n}", suite)
    n_q = sum(len(t.questions) for t in suite.tasks)
    r.add("padding", {"tokens": n, "source": r.cfg.pad_source}, outcome,
          _cost(start, tokens=n * n_q, examples=1), seed=None)  # fmt: skip


def direction_attack(r: _Runner) -> None:
    """Łucki et al.'s directional ablation (arXiv 2409.18025): the top singular direction of
    (unlearned − base) at the edited hook on the edited tokens of forget text, projected out of the
    unlearned model's activation there (after the method's hook). Optional rows: the same projection on
    the base model (`direction_control`: what removing the direction costs by itself) and, for SAE
    edits, the whole span of the clamped decoder rows (`direction_span`)."""
    cfg, lm, target = r.cfg, r.lm, r.target
    start = time.perf_counter()
    texts = list(iter_texts(cfg.direction_text, limit_docs=max(8, cfg.direction_tokens // 16)))
    rule = "nonzero" if target.kind == "hook" else "large"
    setting = {"basis": "top singular vector", "hook": target.hook, "text": cfg.direction_text,
               "edited": rule if rule == "nonzero" else f"|delta| >= {cfg.direction_min_rel:g} |x|",
               "ablation": cfg.direction_ablation}  # fmt: skip
    try:
        rows = edit_differences(lm.model, lm.tokenizer, texts, target, target.hook, rule=rule,
                                min_rel=cfg.direction_min_rel, max_tokens=cfg.direction_tokens)  # fmt: skip
    except UnlearnError as e:  # nothing edited on this text: no direction to remove, say so
        r.add("direction", setting, None, _cost(start, examples=len(texts)), note=str(e), seed=None)
        return
    d_D, explained = dominant_direction(rows.diff_ND)
    fit = {"explained": explained, "edited_tokens": rows.n_edited, "tokens": rows.n_tokens}
    mean_D = rows.base_mean_D if cfg.direction_ablation == "mean" else None
    with target(lm.model), ablated(lm.model, target.hook, d_D[:, None], mean_D):
        outcome = r.evaluate("direction ablation")
    r.add("direction", setting, outcome,
          _cost(start, tokens=rows.n_tokens, examples=len(texts)), **fit, seed=None)  # fmt: skip
    if cfg.direction_control:
        start = time.perf_counter()
        with ablated(lm.model, target.hook, d_D[:, None], mean_D):
            outcome = r.evaluate("direction ablation on the base model")
        r.add("direction", {**setting, "state": "base model (control)"}, outcome, _cost(start),
              note="the same projection without the method: its own cost", seed=None)  # fmt: skip
    if cfg.direction_span and target.decoder_basis_DK is not None:
        start = time.perf_counter()
        k = target.decoder_basis_DK.shape[1]
        with target(lm.model), ablated(lm.model, target.hook, target.decoder_basis_DK, mean_D):
            outcome = r.evaluate("decoder-span ablation")
        r.add("direction", {"basis": f"W_dec span ({k})", "hook": target.hook}, outcome, _cost(start),
              seed=None)  # fmt: skip


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
          _cost(start, examples=len(train)), probe={"per_layer": per_layer, "chance": 0.25},
          seed=cfg.seed)  # fmt: skip


ATTACK_FUNCS: dict[str, Callable[[_Runner], None]] = {
    "hook-removal": hook_removal,
    "relearn": relearn,
    "few-shot": few_shot_attack,
    "padding": padding_attack,
    "direction": direction_attack,
    "probe": probe_attack,
}
