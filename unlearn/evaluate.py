"""The shared evaluator: every command measures forgetting and side effects through `EvalSuite.run`.

`prepare_eval` loads the questions once and, with `known_only`, finds the *known subset* with the
unhooked model (Farrell et al. 2024 §4 / SAEBench: a question is known if the model answers it right in
all 24 orderings of its choices; under cloze scoring, if it answers it right). Known subsets are cached
under `cache_dir()/known`, keyed by the model's source, a fingerprint of its weights, the task, its
questions and the prompt settings — so a hooked or RMU-trained model can never reuse or pollute them,
and they are only ever computed here, before any intervention is installed.

`EvalSuite.run(model)` then scores the model *as it is now*: hooks installed by the caller's context
manager act during the forward passes, which is how interventions and RMU are measured.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np
import pandas as pd
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from unlearn.checks import check_question_lengths, model_context
from unlearn.errors import UnlearnError
from unlearn.models import LoadedModel
from unlearn.paths import cache_dir
from unlearn.presets import Preset
from unlearn.prompts import QuestionLike
from unlearn.results import EvalBlock, TaskScore, read_json, write_json
from unlearn.scoring import ALL_ORDERS, make_letter_scorer, score_cloze, score_letter

log = logging.getLogger(__name__)

Protocol = Literal["letter", "cloze", "lm-eval"]
PROMPT_VERSION = 1
"""Bump when prompt text changes, so cached known subsets are recomputed."""


@dataclass
class EvalConfig:
    forget: list[str] = field(default_factory=list)
    """Question sources whose accuracy should drop (`wmdp-bio`, `offline:bio`, a .jsonl path)."""
    retain: list[str] = field(default_factory=list)
    """Question sources measuring side effects; multi-subject sources become one task per subject."""
    other: list[str] = field(default_factory=list)
    """Tracked but pooled into neither (e.g. `mmlu:college_biology`, too close to WMDP-bio)."""
    protocol: Protocol = "letter"
    """`letter` (A/B/C/D logits after `Answer: (`), `cloze` (answer-text log-likelihood) or `lm-eval`."""
    permutations: bool = False
    """Letter protocol: score all 24 choice orders; accuracy is the mean over question x order."""
    known_only: bool = False
    """Score only questions the unhooked model knows (letter: right in all 24 orders; else: right)."""
    chat_template: bool | None = None
    """Wrap letter prompts in the chat template; None = the preset's setting, else whether the tokenizer has one."""
    batch_size: int = 16
    """Sequences per forward pass."""
    limit: int | None = None
    """At most this many questions per source (quick runs)."""


def eval_config_from_preset(preset: Preset | None, **overrides) -> EvalConfig:
    """The preset's `eval` section as an EvalConfig; overrides that are None are ignored."""
    ev = preset.eval if preset else {}
    cfg = EvalConfig(
        forget=list(ev.get("forget", [])),
        retain=list(ev.get("retain", [])),
        protocol=ev.get("protocol", "letter"),
        chat_template=preset.chat_template if preset else None,
    )
    names = {f.name for f in fields(EvalConfig)}
    for key, value in overrides.items():
        if key not in names:
            raise TypeError(f"unknown EvalConfig field {key!r}")
        if value is not None:
            setattr(cfg, key, value)
    return cfg


@dataclass
class EvalTask:
    name: str
    role: str
    questions: list[QuestionLike]
    known: np.ndarray | None = None
    """Boolean mask over `questions` (set by `prepare_eval` when `known_only`)."""

    @property
    def scored(self) -> list[QuestionLike]:
        if self.known is None:
            return self.questions
        return [q for q, k in zip(self.questions, self.known, strict=True) if k]


@dataclass
class EvalOutcome:
    block: EvalBlock
    questions: pd.DataFrame
    """One row per scored question: task, role, index, subject, answer, pred, correct (+ protocol columns)."""


def protocol_name(cfg: EvalConfig) -> str:
    if cfg.protocol == "letter" and cfg.permutations:
        return "letter-perm24"
    return cfg.protocol


class EvalSuite:
    """Questions (and known subsets) prepared once; `run` scores any model state on them."""

    def __init__(self, tokenizer, cfg: EvalConfig, tasks: list[EvalTask], chat_template: bool):
        self.tokenizer, self.cfg, self.tasks, self.chat_template = tokenizer, cfg, tasks, chat_template

    def run(self, model: nn.Module | LoadedModel, *, desc: str | None = None) -> EvalOutcome:
        model = model.model if isinstance(model, LoadedModel) else model
        cfg, protocol = self.cfg, protocol_name(self.cfg)
        per_q = 24 if protocol == "letter-perm24" else 4 if cfg.protocol == "cloze" else 1
        total = sum(len(t.scored) for t in self.tasks) * per_q
        scores, frames = [], []
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ]
        with Progress(*columns, transient=True) as bar:
            job = bar.add_task(desc or f"eval ({protocol})", total=total)
            for task in self.tasks:
                questions = task.scored
                if not questions:
                    log.warning("task %s has no questions to score (empty known subset?)", task.name)
                    scores.append(TaskScore(task.name, task.role, protocol, self._subset, 0, None))
                    continue
                frame = score_questions(
                    model,
                    self.tokenizer,
                    questions,
                    cfg,
                    chat_template=self.chat_template,
                    progress=lambda n: bar.advance(job, n),
                )
                frame.insert(0, "role", task.role)
                frame.insert(0, "task", task.name)
                frames.append(frame)
                acc_norm = float(frame["correct_norm"].mean()) if "correct_norm" in frame else None
                acc = float(
                    frame["frac_correct"].mean() if "frac_correct" in frame else frame["correct"].mean()
                )
                scores.append(
                    TaskScore(task.name, task.role, protocol, self._subset, len(questions), acc, acc_norm)
                )
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return EvalOutcome(block=EvalBlock.from_scores(scores), questions=table)

    @property
    def _subset(self) -> str:
        return "known" if self.cfg.known_only else "all"


def score_questions(
    model: nn.Module,
    tokenizer,
    questions: Sequence[QuestionLike],
    cfg: EvalConfig,
    *,
    chat_template: bool,
    progress=None,
) -> pd.DataFrame:
    """Per-question predictions of one protocol (the model as it is now, hooks included)."""
    frame = pd.DataFrame(
        {
            "index": [getattr(q, "index", i) for i, q in enumerate(questions)],
            "subject": [q.subject for q in questions],
            "answer": [q.answer for q in questions],
        }
    )
    if cfg.protocol == "letter":
        scorer = make_letter_scorer(model, tokenizer, batch_size=cfg.batch_size, progress=progress)
        orders = ALL_ORDERS if cfg.permutations else [(0, 1, 2, 3)]
        out = score_letter(questions, tokenizer, scorer, chat_template=chat_template, orders=orders)
        frame["pred"] = out["pred"]
        frame["correct"] = out["correct"][:, 0]
        if cfg.permutations:
            frame["frac_correct"] = out["correct"].mean(axis=1)
            frame["all_orders_correct"] = out["correct"].all(axis=1)
    elif cfg.protocol == "cloze":
        out = score_cloze(questions, model, tokenizer, batch_size=cfg.batch_size, progress=progress)
        frame["pred"], frame["pred_norm"] = out["pred"], out["pred_norm"]
        frame["correct"] = out["pred"] == frame["answer"].to_numpy()
        frame["correct_norm"] = out["pred_norm"] == frame["answer"].to_numpy()
        for k in range(4):
            frame[f"ll_{k}"] = out["ll"][:, k]
    elif cfg.protocol == "lm-eval":
        from unlearn.lmeval import lmeval_predictions

        out = lmeval_predictions(
            model, tokenizer, questions, style="mmlu", chat_template=chat_template, batch_size=cfg.batch_size
        )
        frame["pred"] = out["pred"]
        frame["correct"] = out["pred"] == frame["answer"].to_numpy()
        if progress:
            progress(len(questions))
    else:
        raise UnlearnError(f"Unknown protocol {cfg.protocol!r}; use letter, cloze or lm-eval.")
    return frame


def prepare_eval(lm: LoadedModel, cfg: EvalConfig) -> EvalSuite:
    """Load the questions and, with `known_only`, the known subsets (computed with the model as it is now,
    which must be unhooked: call this before installing any intervention)."""
    chat = _resolve_chat_template(lm, cfg.chat_template)
    tasks = load_tasks(cfg)
    for task in tasks:  # an over-long question is a clear error, not a many-GB attention allocation
        check_question_lengths(task.questions, lm.tokenizer, protocol=cfg.protocol, chat_template=chat,
                               limit=model_context(lm.model))  # fmt: skip
    if cfg.known_only:
        for task in tasks:
            task.known = known_mask(lm, task, cfg, chat_template=chat)
            log.info("%s: %d of %d questions known", task.name, int(task.known.sum()), len(task.known))
    return EvalSuite(lm.tokenizer, cfg, tasks, chat)


def _resolve_chat_template(lm: LoadedModel, wanted: bool | None) -> bool:
    has = bool(getattr(lm.tokenizer, "chat_template", None))
    if wanted is None:
        wanted = lm.preset.chat_template if lm.preset else has
    if wanted and not has:
        raise UnlearnError(f"The tokenizer of {lm.source!r} has no chat template; pass --no-chat-template.")
    return bool(wanted)


def load_tasks(cfg: EvalConfig) -> list[EvalTask]:
    from unlearn.data import load_questions, split_by_subject

    if not (cfg.forget or cfg.retain or cfg.other):
        raise UnlearnError(
            "No evaluation tasks: pass --tasks (e.g. wmdp-bio,mmlu:college_biology) or a preset."
        )
    tasks: list[EvalTask] = []
    for role, sources in (("forget", cfg.forget), ("retain", cfg.retain), ("other", cfg.other)):
        for source in sources:
            questions = load_questions(source, limit=cfg.limit)
            groups = split_by_subject(questions)
            if len(groups) > 1:
                base = source.split("/")[0] if source.startswith("offline:") else source
                tasks += [EvalTask(f"{base}/{subject}", role, list(qs)) for subject, qs in groups.items()]
            else:
                tasks.append(EvalTask(source, role, list(questions)))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise UnlearnError(f"A task is listed twice: {sorted(n for n in names if names.count(n) > 1)}.")
    return tasks


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


def _known_key(lm: LoadedModel, task: EvalTask, cfg: EvalConfig, chat_template: bool) -> dict:
    qtext = json.dumps([[q.question, list(q.choices), q.answer] for q in task.questions])
    return {
        "model": lm.source,
        "weights": weight_fingerprint(lm.model),
        "task": task.name,
        "protocol": cfg.protocol,
        "chat_template": chat_template if cfg.protocol != "cloze" else None,
        "prompt_version": PROMPT_VERSION,
        "questions": hashlib.sha256(qtext.encode()).hexdigest()[:16],
    }


def known_mask(lm: LoadedModel, task: EvalTask, cfg: EvalConfig, *, chat_template: bool) -> np.ndarray:
    """Which questions the (unhooked) model knows; read from the cache when computed before."""
    key = _known_key(lm, task, cfg, chat_template)
    path = (
        cache_dir()
        / "known"
        / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24] + ".json")
    )
    if path.exists():
        cached = read_json(path)
        if cached.get("key") == key:
            return np.asarray(cached["known"], dtype=bool)
    if cfg.protocol == "letter":
        scorer = make_letter_scorer(lm.model, lm.tokenizer, batch_size=cfg.batch_size)
        correct = score_letter(
            task.questions, lm.tokenizer, scorer, chat_template=chat_template, orders=ALL_ORDERS
        )
        known = correct["correct"].all(axis=1)
    else:
        frame = score_questions(lm.model, lm.tokenizer, task.questions, cfg, chat_template=chat_template)
        known = frame["correct"].to_numpy(dtype=bool)
    write_json(path, {"key": key, "known": known.tolist()})
    return known
