"""Cloze accuracy of a model on the offline question sets, and the answer-prior accuracy.

The prior run scores the same four continuations after `Question: \\nAnswer:` (question text removed),
so it shows how often the answers alone, by length or commonness, pick the correct choice. A set whose
prior accuracy is far above chance (25%) measures answer frequency more than knowledge.

    nice python data/questions/measure_cloze.py [--model gemma-3-270m] [--sets bio retain other]
        [--json out.json]

Prints a markdown table per set and subject; `--json` also writes per-question results.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import numpy as np

from unlearn.data import Question, load_questions
from unlearn.eval.scoring import score_cloze
from unlearn.models import load_model
from unlearn.paths import shipped_dir


@dataclass(frozen=True)
class Bare:
    """A question with its text removed (satisfies `unlearn.eval.prompts.QuestionLike`)."""

    question: str
    choices: list[str]
    answer: int
    subject: str | None


def _flag(value: float | bool) -> bool | None:
    return None if isinstance(value, float) and np.isnan(value) else bool(value)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--sets", nargs="+", default=["bio", "retain", "other"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--only", choices=["cloze", "prior"], help="run one of the two scorings")
    parser.add_argument("--json")
    args = parser.parse_args()
    lm = load_model(args.model)
    results = {}
    print("| set | subject | n | cloze acc | prior-only acc |\n|---|---|---|---|---|")
    for name in args.sets:
        # by path, so a set works before it is registered as an `offline:` source
        qs: list[Question] = load_questions(str(shipped_dir() / "questions" / f"{name}.jsonl"))
        bare = [Bare("", list(q.choices), q.answer, q.subject) for q in qs]
        answer = np.array([q.answer for q in qs])
        nan = np.full(len(qs), np.nan)
        full, prior = nan, nan
        if args.only != "prior":
            full = score_cloze(qs, lm.model, lm.tokenizer, batch_size=args.batch_size)["pred"] == answer
        if args.only != "cloze":
            prior = score_cloze(bare, lm.model, lm.tokenizer, batch_size=args.batch_size)["pred"] == answer
        subjects = sorted({q.subject for q in qs})
        for subject in [*subjects, None] if len(subjects) > 1 else [None]:
            keep = np.array([subject is None or q.subject == subject for q in qs])
            label = subject or "(all)"
            print(f"| {name} | {label} | {keep.sum()} | {full[keep].mean():.3f} | {prior[keep].mean():.3f} |")
        results[name] = [
            {"question": q.question, "subject": q.subject, "correct": _flag(f), "prior_correct": _flag(p)}
            for q, f, p in zip(qs, full, prior, strict=True)
        ]
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
