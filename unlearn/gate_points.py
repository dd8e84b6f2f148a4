"""Gated points of an intervene sweep: a gate calibrated on dev retain questions, its firing rates on the
evaluation's own questions, and the context manager that installs it.

The threshold τ is chosen for a target false-positive rate on the *dev* half of the retain questions
(`calibrate_threshold`), then the gate's firing rate is measured on the questions the point is scored
on (test retain = the false-positive rate a reader should trust; test forget = how much of the topic
the gate catches; the biology-adjacent `other` set = how often benign biology is blocked). Dynamic SAE
Guardrails (Muhamed et al., arXiv 2504.08192) calibrate on WikiText at the 95th percentile; calibrating
on held-out questions of the evaluated kind is what makes the measured rate match the target.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from unlearn.data import load_questions
from unlearn.errors import UnlearnError
from unlearn.evaluate import with_split
from unlearn.gates import GATE_KINDS, Gate, calibrated, firing_rate, gate_scores

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


def calibrate_gate(
    lm, sae, gate: Gate, suite, *, fpr: float, hook_name: str, benign: Sequence[str] = ()
) -> Gate:
    """`gate` with τ set on the dev retain questions and firing rates measured on the scored questions and
    on `benign` question sources (benign biology that should not be blocked; only the gate is run)."""
    split = getattr(suite.cfg, "split", "all")
    dev = _questions(suite, "retain", "dev" if split != "all" else "all")
    if split == "all":
        log.warning("no dev/test split: the gate is calibrated on the questions it is scored on")
    if not dev:
        raise UnlearnError("Calibrating a gate needs retain questions; pass --retain-tasks or a preset.")
    gate = calibrated(gate, gate_scores(lm, sae, gate, dev, hook_name=hook_name), fpr)
    rates = dict(gate.measured_fpr or {})
    for role in ("retain", "other", "forget"):
        scored = [q for t in suite.tasks if t.role == role for q in t.questions]
        if scored:
            rates[f"{role}_{split}"] = firing_rate(
                gate_scores(lm, sae, gate, scored, hook_name=hook_name), gate.threshold
            )
    for source in benign:
        qs = load_questions(with_split(source, split), limit=suite.cfg.limit)
        rates[f"benign:{source}"] = firing_rate(
            gate_scores(lm, sae, gate, qs, hook_name=hook_name), gate.threshold
        )
    log.info("gate %s: τ=%.4g, firing rates %s", gate.kind, gate.threshold, rates)
    return gate.replace(measured_fpr=rates)
