"""The dilution check: forget questions with N tokens of unrelated text prepended to the question text.

A gate that averages evidence over the sequence (the ρ of Dynamic SAE Guardrails, arXiv 2504.08192) is
switched off by enough benign text before the question; a max-over-windows or CUSUM statistic is not, as a
function of per-token evidence (the prefix still changes the question's own activations, which is what
this check measures). The prefixed questions are ordinary questions, so every evaluator scores them
unchanged: `accuracy_vs_prefix` scores them under a point's hook (and unhooked, since the prefix alone
also moves the model), recording how often the gate fired; `firing_vs_prefix` is the cheap part
(truncated forwards, no scoring).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unlearn.clamp.feature_checks import iter_sources
from unlearn.clamp.gates import FiringLog, Gate, firing_rate, gate_scores
from unlearn.errors import UnlearnError
from unlearn.eval.hook_cache import score_all_instead
from unlearn.eval.known import PROMPT_VERSION, numerics, weight_fingerprint
from unlearn.eval.suite import score_questions, touched_questions
from unlearn.hooks import text_config
from unlearn.results import cached_json, read_json, write_json
from unlearn.stats import bootstrap_ci

log = logging.getLogger(__name__)

PREFIX_TOKENS: tuple[int, ...] = (0, 100, 400, 1600)
SEPARATOR = "\n\n"
"""Between the filler and the question, so the question still starts a paragraph."""


def filler_tokens(
    texts: Iterable[str], tokenizer, n_tokens: int, *, at_least: int | None = None
) -> list[int]:
    """The first `n_tokens` token ids of the concatenated texts (no special tokens); with `at_least`, a
    shorter text still serves if it holds that many."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer.encode(text.strip() + "\n", add_special_tokens=False)
        if len(ids) >= n_tokens:
            return ids[:n_tokens]
    if at_least is not None and len(ids) >= at_least:
        return ids
    raise UnlearnError(
        f"The filler source holds only {len(ids)} tokens, fewer than the {n_tokens} the dilution check needs; "
        "pass a larger text source (e.g. offline:retain)."
    )


def max_prefix(model: nn.Module, questions: Sequence, tokenizer, margin: int = 64) -> int:
    """Longest prefix the model's context allows for every question (its own tokens plus `margin` for the
    answer and template)."""
    ctx = getattr(text_config(model), "max_position_embeddings", None) or 2048
    longest = max((len(tokenizer.encode(q.question, add_special_tokens=False)) for q in questions), default=0)
    return max(0, int(ctx) - longest - margin)


def prefixed_questions(questions: Sequence, filler_ids: Sequence[int], n_tokens: int, tokenizer) -> list:
    """Each question with `n_tokens` filler tokens (decoded to text) + a blank line before its text.

    Question i takes the filler from offset i·97 (mod the filler's length), so the prefixes differ;
    `filler_ids` must hold at least `n_tokens` ids. N = 0 returns the questions unchanged."""
    if n_tokens == 0:
        return list(questions)
    if len(filler_ids) < n_tokens:
        raise UnlearnError(f"Need at least {n_tokens} filler tokens, got {len(filler_ids)}.")
    ring = list(filler_ids) * 2
    out = []
    for i, q in enumerate(questions):
        start = (i * 97) % len(filler_ids)
        text = tokenizer.decode(ring[start : start + n_tokens]).strip()
        out.append(dataclasses.replace(q, question=text + SEPARATOR + q.question.strip()))
    return out


def firing_vs_prefix(
    lm,
    sae: nn.Module,
    gates: dict[str, Gate],
    questions: Sequence,
    filler_texts: Iterable[str],
    ns: Sequence[int] = PREFIX_TOKENS,
    *,
    batch_size: int = 8,
) -> dict[str, dict[int, float]]:
    """For each gate, the fraction of `questions` on which it fires with N filler tokens prepended, per N
    (N capped by the model's context; capped values are reported under the N actually used)."""
    cap = max_prefix(lm.model, questions, lm.tokenizer)
    used = sorted({min(int(n), cap) for n in ns})
    filler = filler_tokens(filler_texts, lm.tokenizer, max(4 * max(used), 400))
    out: dict[str, dict[int, float]] = {name: {} for name in gates}
    for n in used:
        qs = prefixed_questions(questions, filler, n, lm.tokenizer)
        for name, gate in gates.items():
            scores = gate_scores(lm, sae, gate, qs, batch_size=batch_size)
            out[name][n] = firing_rate(scores, gate.threshold)
    return out


def summarise(rates: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
    """Per gate: the rate at the smallest N and the largest drop below it at any larger N."""
    summary = {}
    for name, by_n in rates.items():
        ns = sorted(by_n)
        base = by_n[ns[0]]
        summary[name] = {"base": base, "max_drop": float(np.max([base - by_n[n] for n in ns]))}
    return summary


HookFactory = Callable[[FiringLog], AbstractContextManager]
"""Builds a point's hook, recording gate statistics into the log it is given (static hooks ignore it)."""


def capped_prefixes(model: nn.Module, questions: Sequence, tokenizer, ns: Sequence[int]) -> list[int]:
    """The requested prefix lengths, each capped by what the model's context allows (deduplicated)."""
    cap = max_prefix(model, questions, tokenizer)
    return sorted({min(int(n), cap) for n in ns})


def filler_source(lm, given: str | list[str] | None) -> str | list[str]:
    """The filler text source: `--dilution-text`, else the preset's `select.retain_text`."""
    source = given or (lm.preset.select.get("retain_text") if lm.preset else None)
    if not source:
        raise UnlearnError("Filler text is needed: pass --dilution-text (e.g. offline:retain).")
    return source


def prefixed_sets(lm, questions: Sequence, filler_texts: Iterable[str], ns: Sequence[int]) -> dict[int, list]:
    """Per (capped) N, the questions with N filler tokens before them; shared by every state scored."""
    used = capped_prefixes(lm.model, questions, lm.tokenizer, ns)
    filler = filler_tokens(filler_texts, lm.tokenizer, max(4 * max(used), 400), at_least=max(max(used), 1))
    return {n: prefixed_questions(questions, filler, n, lm.tokenizer) for n in used}


def accuracy_vs_prefix(
    sets: dict[int, list],
    score: Callable[[list], np.ndarray],
    hook: HookFactory | None = None,
    threshold: float | None = None,
    *,
    reuse: tuple[dict, Callable[[list, AbstractContextManager], np.ndarray | None]] | None = None,
) -> dict:
    """Accuracy (with a 95% bootstrap interval) per prefix length N of `score(questions) -> correct (n,)`
    run under `hook` (None: unhooked), each question's `correct`, and, for a gate of this `threshold`, its
    firing rate on the sequences forwarded.

    `reuse = (unhooked, touched)`: the unhooked model's result on the same sets and
    `touched(questions, hook) -> bool (n,)` (None where it cannot tell), so only the
    questions the hook changes are scored and the rest keep their unhooked `correct` (exact, as
    `eval.suite.Reuse`; the gate's firing log is that of the touched pass, which sees every sequence)."""
    out: dict = {"prefix_tokens": [], "acc": [], "ci": [], "fired": [], "correct": []}
    for i, (n, qs) in enumerate(sets.items()):
        record = FiringLog()
        with torch.inference_mode():
            if hook is None:
                correct = score(qs)
            elif reuse is None:
                with hook(record):
                    correct = score(qs)
            else:
                correct = _reused(qs, score, hook, record, np.asarray(reuse[0]["correct"][i], bool), reuse[1])
        ci = bootstrap_ci(correct.astype(float))
        stats = record.all_stats()
        out["prefix_tokens"].append(n)
        out["acc"].append(float(correct.mean()))
        out["ci"].append([ci.low, ci.high])
        out["fired"].append(None if threshold is None or not stats else firing_rate(stats, threshold))
        out["correct"].append(correct.astype(bool).tolist())
    return out


def _reused(
    qs: list, score, hook: HookFactory, record: FiringLog, unhooked: np.ndarray, touched
) -> np.ndarray:
    mask = touched(qs, hook(record))
    if mask is None:  # lm-eval builds its own requests: score them all
        with hook(record):
            return score(qs)
    correct = unhooked.copy()
    if mask.any():
        with hook(FiringLog()):
            correct[mask] = score([q for q, m in zip(qs, mask, strict=True) if m])
    return correct


def _digest(sets: dict[int, list]) -> str:
    """Hash of prefixed question sets: each N with its questions' text, choices and answers."""
    text = json.dumps([[n, [[q.question, list(q.choices), q.answer] for q in qs]] for n, qs in sets.items()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Diluter:
    """The dilution check of a sweep (`unlearn.clamp.dilution`): the prefixed question sets and the unhooked
    model's accuracy on them are made once (and kept across sweeps, `_unhooked`); each clamp point adds
    `dilution/<point>.json`, scoring only the prefixed questions its hook touches (`accuracy_vs_prefix`'s
    `reuse`).

    Its control: the same number of known *retain* questions behind the same filler (`benign`), scored
    unhooked once and under each point like the forget sets, with how often its gate fires and how many
    its hook changes. A gate that keeps forget accuracy down at large N only because it fires on every
    long prompt, benign ones included, is not resisting dilution; this is what tells the two apart, and
    the retain accuracy says what such a gate costs a long benign prompt."""

    def __init__(
        self,
        run_dir: Path,
        lm,
        suite,
        ns: list[int],
        n_questions: int,
        filler,
        *,
        hook_name: str | None = None,
    ) -> None:
        self.run_dir, self.lm, self.suite, self.hook_name = run_dir, lm, suite, hook_name
        forget = [q for t in suite.tasks if t.role == "forget" for q in t.scored][:n_questions]
        if not forget:
            raise UnlearnError("The dilution check needs known forget questions; none are known.")
        source = filler_source(lm, filler)
        self.sets = prefixed_sets(lm, forget, iter_sources(source), ns)
        retain = [q for t in suite.tasks if t.role == "retain" for q in t.scored][:n_questions]
        self.benign = prefixed_sets(lm, retain, iter_sources(source), ns) if retain and hook_name else {}
        self.filler = source
        path = run_dir / "dilution" / "baseline.json"
        self.base = read_json(path) if path.exists() else None
        if self.base is None or "correct" not in self.base or (self.benign and "benign" not in self.base):
            self.base = self._unhooked()  # (older runs kept no per-question result or control)
        write_json(path, self.base | {"filler": self.filler})

    def _unhooked(self) -> dict:
        """The unhooked model's result on the prefixed sets, from `cache_dir()/dilution` when this model
        (source and weight fingerprint) scored these very questions under this configuration before: it is
        the most expensive pass of the check (every question, no hook to limit it to those touched), and
        the same in every sweep of a model, as the known subsets are."""
        lm = self.lm
        sets = {"forget": self.sets, "benign": self.benign}
        key = json.loads(json.dumps({
            "model": lm.source, "weights": weight_fingerprint(lm.model), "numerics": numerics(lm.model),
            "eval": dataclasses.asdict(self._cfg),
            "chat_template": self.suite.chat_template, "prompt_version": PROMPT_VERSION,
            "sets": {name: _digest(by_n) for name, by_n in sets.items()},
        }, default=str))  # fmt: skip
        return cached_json("dilution", key, self._score_unhooked)

    def _score_unhooked(self) -> dict:
        base = accuracy_vs_prefix(self.sets, self._score)
        if self.benign:
            base["benign"] = accuracy_vs_prefix(self.benign, self._score)
        return base

    @property
    def _cfg(self):
        return dataclasses.replace(self.suite.cfg, mutual_info=False)

    def _score(self, questions: list):
        frame = score_questions(self.lm.model, self.lm.tokenizer, questions, self._cfg,
                                chat_template=self.suite.chat_template)  # fmt: skip
        return frame["correct"].to_numpy(dtype=bool)

    def _reach(self, questions: list, hook: AbstractContextManager) -> np.ndarray | None:
        """Which questions `hook` changes (`eval.suite.touched_questions`, which installs it)."""
        lm = self.lm
        return touched_questions(lm.model, lm.tokenizer, questions, self._cfg, chat_template=self.suite.chat_template,
                                 hook=hook, hook_name=self.hook_name)  # fmt: skip

    def _to_score(self, found: np.ndarray | None) -> np.ndarray | None:
        """The questions to score given those a hook changes: all of them when a cached prefix makes that
        cheaper (and still exact)."""
        if found is not None and found.any() and score_all_instead(self.lm.model, float(found.mean())):
            return np.ones_like(found)
        return found

    def _touched(self, questions: list, hook: AbstractContextManager) -> np.ndarray | None:
        return self._to_score(self._reach(questions, hook))

    def _benign(self, hook_for: HookFactory, threshold: float | None) -> dict:
        """On the prefixed retain questions, per N: accuracy under the point's hook (scoring only those it
        changes, as for the forget sets), the fraction its gate fires on (None for a static clamp) and the
        fraction its hook changes (None where the sequences are not known ahead)."""
        reach: list[float | None] = []

        def touched(qs: list, hook: AbstractContextManager) -> np.ndarray | None:
            found = self._reach(qs, hook)
            reach.append(None if found is None else float(found.mean()))
            return self._to_score(found)

        out = accuracy_vs_prefix(
            self.benign, self._score, hook_for, threshold, reuse=(self.base["benign"], touched)
        )
        return out | {"touched": reach}

    def point(self, pid: str, hook_for, threshold: float | None) -> None:
        path = self.run_dir / "dilution" / f"{pid}.json"
        if path.exists():
            return
        reuse = (self.base, self._touched) if self.hook_name else None
        result = accuracy_vs_prefix(self.sets, self._score, hook_for, threshold, reuse=reuse)
        if self.benign:
            result["benign"] = self._benign(hook_for, threshold)
        write_json(path, {"point": pid, **result, "base": self.base, "filler": self.filler})
        log.info(
            "dilution %s: acc %s, fired %s at N = %s",
            pid,
            result["acc"],
            result["fired"],
            result["prefix_tokens"],
        )
