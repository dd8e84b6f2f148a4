"""Prompt attacks: the test questions rewritten, then scored by the unchanged evaluator.

Doshi & Stickland (arXiv 2411.12103) find that 5-shot prompting recovers much unlearned accuracy; the
gating literature (Muhamed et al., arXiv 2504.08192, re-run findings) finds that ~100 prepended
unrelated tokens dilute a sequence-level gate. Both attacks build new question objects whose question
text carries the context, so every protocol (cloze `Question: …\\nAnswer:`, letter, lm-eval) scores them
as it scores any question; answers and choices are untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from unlearn.errors import UnlearnError
from unlearn.eval.suite import EvalSuite, EvalTask


def _with_question(q, text: str):
    """A copy of `q` (frozen dataclass or duck-typed object) with a new question text."""
    if dataclasses.is_dataclass(q):
        return dataclasses.replace(q, question=text)
    clone = type(q).__new__(type(q))
    clone.__dict__.update({**vars(q), "question": text})
    return clone


def shot_context(shots: Sequence) -> str:
    """The text `few_shot` puts before each question: the solved shots in the cloze layout."""
    return "".join(f"{s.question.strip()}\nAnswer: {s.choices[s.answer]}\n\nQuestion: " for s in shots)


def few_shot(questions: Sequence, shots: Sequence) -> list:
    """Each question preceded by solved `shots` in the cloze layout (`Q\\nAnswer: A\\n\\nQuestion: …`);
    the evaluator adds the first `Question: ` and the final `\\nAnswer:`."""
    if not shots:
        return list(questions)
    context = shot_context(shots)
    return [_with_question(q, context + q.question.strip()) for q in questions]


def padding_text(tokenizer, texts: Iterable[str], n_tokens: int) -> tuple[str, int]:
    """The first `n_tokens` tokens of the concatenated `texts`, decoded; returns (text, tokens used)."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer.encode(text.strip() + "\n\n", add_special_tokens=False)
        if len(ids) >= n_tokens:
            break
    if len(ids) < n_tokens:
        raise UnlearnError(
            f"The padding source holds only {len(ids)} tokens; pass --pad-tokens {len(ids)} or less."
        )
    return tokenizer.decode(ids[:n_tokens]), n_tokens


def padded(questions: Sequence, prefix: str) -> list:
    """Each question preceded by unrelated text (a dilution attack on sequence-level gates)."""
    return [_with_question(q, prefix.rstrip() + "\n\n" + q.question.strip()) for q in questions]


def rewritten(suite: EvalSuite, rewrite, roles: Sequence[str] = ("forget", "retain")) -> EvalSuite:
    """A suite over the same tasks (same known masks, same order) with `rewrite(questions)` applied to
    the tasks of `roles`; the others are kept as they are."""
    tasks = [
        EvalTask(t.name, t.role, rewrite(t.questions) if t.role in roles else t.questions, t.known)
        for t in suite.tasks
    ]
    return EvalSuite(suite.tokenizer, suite.cfg, tasks, suite.chat_template)
