"""Gated points of an intervene sweep: a gate calibrated on dev retain questions, its firing rates on what
the evaluation really forwards, and on benign biology.

The threshold τ is chosen for a target false-positive rate on the *dev* half of the retain questions
(`calibrate_threshold`), from the statistics the gate computes on the very sequences the scorer forwards
(a dry run of the gate under the point's own protocol: for cloze, each packed question + answers
sequence), so the rate measured later on test retain questions is comparable with the target. Firing
rates on the scored questions are recorded during the point's own evaluation (`FiringLog`): test retain
= the false-positive rate a reader should trust, test forget = how much of the topic the gate catches;
the biology-adjacent `benign` sets (scored with the gate alone) = how often benign biology is blocked.
Dynamic SAE Guardrails (Muhamed et al., arXiv 2504.08192) calibrate on WikiText at the 95th percentile;
calibrating on held-out questions of the evaluated kind is what makes the measured rate match the target.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from unlearn.clamp.dilution import filler_source, prefixed_sets
from unlearn.clamp.feature_checks import iter_sources
from unlearn.clamp.gates import GATE_KINDS, FiringLog, Gate, calibrated, firing_rate, gated
from unlearn.data import load_questions
from unlearn.errors import UnlearnError
from unlearn.eval.suite import forward_batches, forwarded_sequences, score_questions, with_split
from unlearn.hooks import forward_to

log = logging.getLogger(__name__)

DEFAULT_FPR = 0.05
"""Target false-positive rate on dev retain questions (DSG's 95th percentile of benign text)."""


def check_gates(kinds: Sequence[str], fpr: float) -> list[str]:
    bad = [k for k in kinds if k not in GATE_KINDS]
    if bad:
        raise UnlearnError(f"Unknown gate(s) {', '.join(bad)}; use {', '.join(GATE_KINDS)}.")
    if not 0 <= fpr < 1:
        raise UnlearnError(f"--gate-fpr must lie in [0, 1), got {fpr}.")
    return list(dict.fromkeys(kinds))


def _questions(suite, role: str, part: str) -> list:
    """The suite's questions of one role on `part` ("dev" for calibration, the suite's own split else)."""
    sources = {"forget": suite.cfg.forget, "retain": suite.cfg.retain, "other": suite.cfg.other}[role]
    return [q for s in sources for q in load_questions(with_split(s, part), limit=suite.cfg.limit)]


def forwarded_stats(lm, sae, gate: Gate, suite, questions: Sequence, *, hook_name: str) -> list[float]:
    """The gate's statistic on every sequence the suite's scorer forwards for `questions` (a dry run of
    the gate on those very sequences, batched as the scorer does, each forward stopped at the hook)."""
    record = FiringLog()
    cfg, chat = suite.cfg, suite.chat_template
    seqs = forwarded_sequences(lm.model, lm.tokenizer, questions, cfg, chat_template=chat)
    with torch.inference_mode(), gated(lm.model, sae, gate, hook_name=hook_name, record=record, dry_run=True):
        if seqs is None:  # lm-eval builds its own requests: score them for real
            score_questions(lm.model, lm.tokenizer, questions, cfg, chat_template=chat)
        else:
            for inputs, _, _ in forward_batches(lm.model, lm.tokenizer, seqs, cfg.batch_size):
                forward_to(lm.model, [hook_name], **inputs)
    return record.all_stats()


def calibrate_gate(
    lm,
    sae,
    gate: Gate,
    suite,
    *,
    fpr: float,
    hook_name: str,
    benign: Sequence[str] = (),
    prefix_tokens: int = 0,
    filler: str | list[str] | None = None,
) -> Gate:
    """`gate` with τ set on the dev retain questions and its firing rate on `benign` question sources
    (benign biology that should not be blocked; only the gate is run).

    `prefix_tokens` > 0 calibrates on those questions behind that many tokens of `filler` (the dilution
    check's construction, `dilution.prefixed_sets`): a max over windows is a max over more chances the
    longer the prompt, so a τ set on bare questions fires on most long benign prompts; set this way the
    target rate holds for prompts that long (and τ is higher)."""
    split = getattr(suite.cfg, "split", "all")
    dev = _questions(suite, "retain", "dev" if split != "all" else "all")
    if split == "all":
        log.warning("no dev/test split: the gate is calibrated on the questions it is scored on")
    if not dev:
        raise UnlearnError("Calibrating a gate needs retain questions; pass --retain-tasks or a preset.")
    if prefix_tokens:
        ((prefix_tokens, dev),) = prefixed_sets(lm, dev, iter_sources(filler_source(lm, filler)),
                                                [prefix_tokens]).items()  # fmt: skip
    gate = calibrated(gate, forwarded_stats(lm, sae, gate, suite, dev, hook_name=hook_name), fpr)
    rates = dict(gate.measured_fpr or {})
    for source in benign:
        qs = load_questions(with_split(source, split), limit=suite.cfg.limit)
        rates[f"benign:{source}"] = firing_rate(
            forwarded_stats(lm, sae, gate, suite, qs, hook_name=hook_name), gate.threshold
        )
    log.info("gate %s: τ=%.4g (dev questions behind %d filler tokens), firing rates %s",
             gate.kind, gate.threshold, prefix_tokens, rates)  # fmt: skip
    return gate.replace(measured_fpr=rates, calibration_prefix=prefix_tokens)


def with_scored_rates(gate: Gate, record: FiringLog, split: str) -> Gate:
    """`gate` with the firing rates recorded while its point was scored (`<role>_<split>`)."""
    return gate.replace(
        measured_fpr={**(gate.measured_fpr or {}), **record.rates(gate.threshold, f"_{split}")}
    )


def gate_settings(kind: str, typical: Sequence[float], window_span: str = "windows") -> dict:
    """Evidence and span of a sweep's gate: `dsg` keeps the paper's rule (a token counts if any feature
    fires; a firing sequence is edited on every active token); `window` and `cusum` sum the features'
    activations in units of their typical activation (continuous, so τ meets its target rate; `gates`
    module docstring), and `window` edits only inside passing windows unless `window_span="sequence"`."""
    span = {"span": window_span} if kind == "window" else {}
    if kind == "dsg" or not typical:
        return span
    return {"evidence": "sum", "weights": tuple(1.0 / max(float(m), 1e-12) for m in typical), **span}
