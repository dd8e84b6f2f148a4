"""Known subsets: which questions the unhooked model knows, computed once per model state and cached.

The rules (letter: right in all 24 choice orders, Farrell et al. arXiv 2410.19278 / SAEBench
`sae_bench/evals/unlearning/`; cloze: right, by `known_margin` nats, and not the answer prior) are in
`unlearn.eval.suite`'s docstring. The cache under `cache_dir()/known` is keyed by the model's source, a
fingerprint of its weights, the task, its questions, the split and the rule's settings, so a hooked or
RMU-trained model can never reuse or pollute it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from unlearn.eval.scoring import ALL_ORDERS, make_letter_scorer, score_letter
from unlearn.hooks import text_config
from unlearn.models import LoadedModel
from unlearn.paths import keyed_cache_path
from unlearn.results import read_json, write_json

if TYPE_CHECKING:
    from unlearn.eval.suite import EvalConfig, EvalTask

PROMPT_VERSION = 2
"""Bump when prompt text or the known rule changes, so cached known subsets are recomputed
(2: cloze known = right + margin + not the answer prior)."""


def answer_margin(ll_N4: np.ndarray, answers_N: np.ndarray) -> np.ndarray:
    """Log-likelihood of the right answer minus the best distractor's (nats; > 0 iff strictly right)."""
    rows = np.arange(len(answers_N))
    others = ll_N4.astype(np.float64).copy()
    others[rows, answers_N] = -np.inf
    return ll_N4[rows, answers_N] - others.max(axis=1)


def cloze_known(frame: pd.DataFrame, margin: float) -> np.ndarray:
    """The cloze known rule on a `score_questions` frame: right, by `margin` nats, and not the prior."""
    return (
        frame["correct"].to_numpy(dtype=bool)
        & (frame["margin"].to_numpy() >= margin)
        & (frame["pred_prior"].to_numpy() != frame["answer"].to_numpy())
    )


def weight_fingerprint(model: nn.Module, n_values: int = 8) -> str:
    """Hash of a few evenly spaced values of every parameter: cheap, and any retraining (RMU changes
    whole matrices) or a different checkpoint gives a different key."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)
        k = min(n_values, flat.numel())
        # integer spacing: a float32 linspace rounds past the end of large tensors (262k x 640 embeddings)
        idx = (torch.arange(k, device=flat.device) * (flat.numel() - 1)) // max(k - 1, 1)
        digest.update(name.encode() + str(tuple(param.shape)).encode())
        digest.update(flat[idx].double().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def numerics(model: nn.Module) -> dict:
    """What sets a forward's rounding besides the weights: dtype, device kind and attention implementation
    (a cached result computed under other ones may differ in its last bits, and so on a near tie)."""
    param = next(model.parameters())
    attn = getattr(text_config(model), "_attn_implementation", None)
    return {"dtype": str(param.dtype), "device": param.device.type, "attn": attn}


def _known_key(lm: LoadedModel, task: EvalTask, cfg: EvalConfig, chat_template: bool) -> dict:
    qtext = json.dumps([[q.question, list(q.choices), q.answer] for q in task.questions])
    return {
        "model": lm.source,
        "weights": weight_fingerprint(lm.model),
        "numerics": numerics(lm.model),
        "task": task.name,
        "protocol": cfg.protocol,
        "chat_template": chat_template if cfg.protocol != "cloze" else None,
        "prompt_version": PROMPT_VERSION,
        "split": task.split,
        "known_margin": cfg.known_margin if cfg.protocol == "cloze" else None,
        "questions": hashlib.sha256(qtext.encode()).hexdigest()[:16],
    }


def known_mask(lm: LoadedModel, task: EvalTask, cfg: EvalConfig, *, chat_template: bool) -> np.ndarray:
    """Which questions the (unhooked) model knows; read from the cache when computed before."""
    return unhooked_scores(lm, task, cfg, chat_template=chat_template)[0]


def unhooked_scores(
    lm: LoadedModel, task: EvalTask, cfg: EvalConfig, *, chat_template: bool
) -> tuple[np.ndarray, pd.DataFrame | None]:
    """The known mask and, under cloze, the unhooked model's per-question frame of the same pass (with
    the answer-prior columns), cached together. That frame *is* the unhooked model's evaluation — the
    same `score_questions` call on the same questions and batches — so a baseline needs no second pass
    (`EvalSuite.run`). Letter known subsets score 24 orders in one batch, so they keep no frame."""
    key = _known_key(lm, task, cfg, chat_template)
    path = keyed_cache_path("known", key)
    if path.exists():
        cached = read_json(path)
        if cached.get("key") == key and ("frame" in cached or cfg.protocol != "cloze"):
            frame = None
            if "frame" in cached:
                frame = pd.DataFrame(cached["frame"]).astype(cached["dtypes"])
            return np.asarray(cached["known"], dtype=bool), frame
    frame = None
    if cfg.protocol == "letter":
        scorer = make_letter_scorer(lm.model, lm.tokenizer, batch_size=cfg.batch_size)
        correct = score_letter(
            task.questions, lm.tokenizer, scorer, chat_template=chat_template, orders=ALL_ORDERS
        )
        known = correct["correct"].all(axis=1)
    else:
        from unlearn.eval.suite import score_questions

        with_prior = dataclasses.replace(cfg, mutual_info=True)  # the cloze rule needs the answer prior
        frame = score_questions(
            lm.model, lm.tokenizer, task.questions, with_prior, chat_template=chat_template
        )
        known = (
            cloze_known(frame, cfg.known_margin)
            if cfg.protocol == "cloze"
            else frame["correct"].to_numpy(dtype=bool)
        )
    entry = {"key": key, "known": known.tolist()}
    if cfg.protocol == "cloze":  # JSON floats round-trip exactly, so a cached frame equals a fresh one
        entry["frame"] = frame.to_dict(orient="list")
        entry["dtypes"] = {col: str(dtype) for col, dtype in frame.dtypes.items()}
    write_json(path, entry)
    return known, (frame if cfg.protocol == "cloze" else None)
