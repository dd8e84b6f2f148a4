"""lm-evaluation-harness backend: run its tasks in-process on our (possibly hooked) model object.

`HFLM(pretrained=<model>, tokenizer=<tokenizer>, add_bos_token=True)` wraps the loaded model, so hooks
installed by an intervention act inside lm-eval too; Gemma needs the BOS token (`HFLM(add_bos_token=True)`). Local
question files run as YAML tasks from `unlearn/shipped/evals/` (`dataset_path: json`); `TaskManager(include_path=…,
include_defaults=False)` skips lm-eval's 10 s scan of its own tasks. Hub tasks (`wmdp_bio`, `mmlu_*`)
use lm-eval's defaults.

`lmeval_predictions` returns lm-eval's per-question answers for our questions, which is how the tests
and `bench/bench_eval.py` check that our scorers give the same answers as lm-eval.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from torch import nn

from unlearn.checks import require_finite
from unlearn.errors import UnlearnError
from unlearn.eval.prompts import QuestionLike, question_subject, subject_phrase
from unlearn.paths import shipped_dir

log = logging.getLogger(__name__)

Style = Literal["letter", "cloze", "mmlu"]


def evals_dir() -> Path:
    """The shipped lm-eval YAML tasks (`unlearn/shipped/evals`)."""
    return shipped_dir() / "evals"


def lm_eval_task_name(source: str) -> str:
    """Our question source -> lm-eval's task name (`wmdp-bio` -> `wmdp_bio`, `mmlu:x` -> `mmlu_x`,
    `offline:bio` -> our shipped `offline_bio_mmlu`)."""
    if source.startswith("wmdp-"):
        return source.replace("-", "_")
    if source.startswith("mmlu:"):
        return "mmlu_" + source.removeprefix("mmlu:")
    if source in ("offline:bio", "offline:retain"):
        return source.replace(":", "_") + "_mmlu"
    raise UnlearnError(
        f"No lm-eval task for {source!r}; use wmdp-*, mmlu:<subject>, offline:bio or offline:retain."
    )


def include_dir(dest: Path) -> Path:
    """Copy the shipped task YAMLs to `dest` with their data paths made absolute (lm-eval resolves
    `data_files` against the working directory, not the YAML file)."""
    shutil.copytree(evals_dir(), dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    questions = (shipped_dir() / "questions").resolve()
    for path in dest.glob("*.yaml"):
        text = re.sub(r"test: questions/", f"test: {questions}/", path.read_text())
        path.write_text(text)
    return dest


def _hflm(model: nn.Module, tokenizer, batch_size: int):
    from lm_eval.models.huggingface import HFLM  # a dependency (pyproject: lm-eval>=0.4.8)

    return HFLM(pretrained=model, tokenizer=tokenizer, add_bos_token=True, batch_size=batch_size)


def run_tasks(
    model: nn.Module,
    tokenizer,
    tasks: Sequence[str],
    *,
    include_path: Path | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    chat_template: bool = False,
) -> dict:
    """Run lm-eval tasks by name and return `simple_evaluate`'s result dict (with per-sample logs).

    With `include_path` only those YAML tasks are indexed; without, lm-eval's own task tree (hub data).
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = (
        TaskManager(include_path=str(include_path), include_defaults=False) if include_path else TaskManager()
    )
    was_training = model.training
    model.eval()
    try:
        return simple_evaluate(
            model=_hflm(model, tokenizer, batch_size),
            tasks=list(tasks),
            task_manager=manager,
            limit=limit,
            log_samples=True,
            bootstrap_iters=0,
            apply_chat_template=chat_template,
            num_fewshot=0,
        )
    finally:
        model.train(was_training)


def predictions_from_samples(samples: list[dict], style: Style) -> dict[str, np.ndarray]:
    """Per-question `pred` (and cloze `pred_norm`, `ll`) from lm-eval's logged samples, in doc order."""
    samples = sorted(samples, key=lambda s: s["doc_id"])
    lls = np.array([[float(r[0]) for r in s["filtered_resps"]] for s in samples])  # (n, n_choices)
    if style == "letter":
        lls = lls.reshape(len(samples), 4, 2).max(axis=2)  # "A" / " A" pooled, as utils.process_letter
    require_finite(lls, "lm-eval log-likelihoods", "lm-evaluation-harness samples")
    out = {"ll": lls, "pred": lls.argmax(axis=1)}
    if style == "cloze":
        lengths = np.array([[len(c) for c in s["doc"]["choices"]] for s in samples], dtype=float)
        out["pred_norm"] = (lls / lengths).argmax(axis=1)
    return out


def lmeval_predictions(
    model: nn.Module,
    tokenizer,
    questions: Sequence[QuestionLike],
    *,
    style: Style = "mmlu",
    chat_template: bool = False,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """lm-eval's answers to our questions under one of the shipped prompt styles (a task generated at
    runtime from `evals/_<style>_template_yaml`, reading the questions from a temporary jsonl file)."""
    if chat_template and style == "cloze":
        raise UnlearnError("The cloze protocol scores raw text; use it without a chat template.")
    with tempfile.TemporaryDirectory(prefix="unlearn-lmeval-") as tmp:
        folder = include_dir(Path(tmp) / "tasks")
        for path in folder.glob("offline_*.yaml"):  # index only the generated task
            path.unlink()
        data = Path(tmp) / "questions.jsonl"
        rows = [
            {
                "question": q.question,
                "choices": list(q.choices),
                "answer": int(q.answer),
                "subject": subject_phrase(question_subject(q)),
            }
            for q in questions
        ]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        template = (
            "_letter_chat_template_yaml"
            if (style == "letter" and chat_template)
            else f"_{style}_template_yaml"
        )
        lines = [
            "task: unlearn_questions",
            f"include: {template}",
            "dataset_kwargs:",
            "  data_files:",
            f"    test: {json.dumps(str(data))}",
        ]
        if style == "mmlu":
            about = subject_phrase(question_subject(questions[0]) if questions else None)
            lines.append(
                "description: "
                + json.dumps(f"The following are multiple choice questions (with answers) about {about}.\n\n")
            )
        (folder / "unlearn_questions.yaml").write_text("\n".join(lines) + "\n")
        results = run_tasks(
            model,
            tokenizer,
            ["unlearn_questions"],
            include_path=folder,
            batch_size=batch_size,
            chat_template=chat_template,
        )
    return predictions_from_samples(results["samples"]["unlearn_questions"], style)
