"""Report tables for `unlearn attack` runs: is the knowledge gone, or only hidden?

`attack_tables(results_dir)` reads every *completed* run under `<results_dir>/attack/` (the newest per
model × target) and returns `(title, intro, table)` triples of display strings: one table of forget /
retain accuracy after each attack with 95% bootstrap intervals, the recovered fraction of the forget gap
with its paired interval, and the attack's cost; and, when probes ran, one table of probe accuracies.
The attacks follow Łucki et al. (arXiv 2409.18025: relearning on few texts, directional ablation), Deeb &
Roger (arXiv 2410.08827: relearning on accessible facts) and Doshi & Stickland (arXiv 2411.12103: few-shot
prompting); see `unlearn.attacks`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from unlearn.results import completed_runs, read_json

ATTACK_INTRO = (
    "Accuracy after an intervention says what the model answers, not what it still knows. Each unlearned "
    "state is attacked on the same test questions; 'recovered' is (acc_attacked − acc_unlearned) / "
    "(acc_base − acc_unlearned) on the forget questions — 0: the attack recovers nothing, 1: the base "
    "model's accuracy is back — with a paired bootstrap 95% interval (the three states resampled on the "
    "same questions; '–' where the unlearned gap is below one question). Accuracies are % with 95% "
    "bootstrap intervals. Attacks: hook removal (a hook protects nothing once the weights are open, so "
    "that row is the base model), relearning (a few fine-tuning steps on k forget-topic or unrelated "
    "texts with the method's hook and gate kept in place; Łucki et al., arXiv 2409.18025; Deeb & Roger, "
    "arXiv 2410.08827), k-shot retain context and unrelated-text padding (Doshi & Stickland, arXiv "
    "2411.12103), and ablation of the edit's dominant direction, estimated on the tokens the method "
    "edited and projected out of the unlearned model's activation (Łucki et al.); a 'control' row applies "
    "the same projection to the base model. Cost: wall seconds (evaluation included), optimizer steps, "
    "tokens supplied or forwarded by the attacker, attacker examples."
)

PROBE_INTRO = (
    "A logistic-regression probe on the residual stream at the last token of each (question, choice) "
    "is fitted on dev questions to pick the correct choice, and scored on the test questions (chance 25%). "
    "If the probe still finds the answer in the unlearned model as well as in the base model, the "
    "knowledge is hidden from the output, not removed from the activations."
)


def _ci(cell: dict | None, scale: float = 100.0, digits: int = 1) -> str:
    if not cell or cell.get("value") is None:
        return "–"
    v, lo, hi = (float(cell[k]) * scale for k in ("value", "low", "high"))
    if pd.isna(lo) or pd.isna(hi):
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _cost(cost: dict) -> str:
    parts = []
    if cost.get("seconds") is not None:
        parts.append(f"{float(cost['seconds']):.0f} s")
    for key, unit in (("steps", "steps"), ("tokens", "tok"), ("examples", "ex")):
        if cost.get(key):
            parts.append(f"{int(cost[key]):,} {unit}")
    return ", ".join(parts) or "–"


def attack_label(row: dict) -> str:
    """A short description of one row's attack and setting."""
    a, s = row["attack"], row.get("setting") or {}
    if a == "base":
        return "none: base model"
    if a == "unlearned":
        return "none: unlearned"
    if a == "hook-removal":
        return "hook removal (open weights)"
    if a == "relearn":
        loss = row.get("loss") or {}
        fit = ""
        if loss.get("before") is not None and loss.get("after") is not None:
            fit = f", loss {loss['before']:.2f}→{loss['after']:.2f}"
        return f"relearn {s.get('texts')} k={s.get('k')} S={s.get('S')} lr={s.get('lr'):g}{fit}"
    if a == "few-shot":
        return f"{s.get('shots')}-shot retain context"
    if a == "padding":
        return f"padding {s.get('tokens')} unrelated tokens"
    if a == "direction":
        if str(s.get("basis", "")).startswith("W_dec"):
            return f"ablate {s['basis']}"
        if s.get("state"):
            return "direction ablation on the base model (control)"
        if row.get("forget") is None:
            return "direction ablation: nothing edited on the direction text"
        return "direction ablation"
    return a


def _runs(results_dir: Path) -> list[tuple[dict, dict]]:
    """(config, metrics) of the newest completed attack run per model × target, oldest first."""
    newest: dict[tuple, tuple[dict, dict]] = {}
    for run in completed_runs("attack", root=Path(results_dir), require="metrics.json"):
        try:
            config, metrics = read_json(run / "config.json"), read_json(run / "metrics.json")
        except (OSError, ValueError):
            continue
        key = (config.get("model"), config.get("target") or metrics.get("target"))
        newest.pop(key, None)
        newest[key] = (config, metrics)
    return list(newest.values())


def attack_frame(results_dir: Path) -> pd.DataFrame:
    """One row per target × attack (display strings)."""
    rows = []
    for config, metrics in _runs(results_dir):
        target = metrics.get("target") or config.get("target_name")
        kind = metrics.get("kind") or config.get("target_kind")
        for r in metrics.get("rows", []):
            if r["attack"] == "probe":
                continue
            rows.append({
                "target": target, "kind": kind, "attack": attack_label(r),
                "forget % [95% CI]": _ci(r.get("forget")), "retain % [95% CI]": _ci(r.get("retain")),
                "recovered (forget) [95% CI]": _ci(r.get("forget_recovered"), 1.0, 2),
                "cost": _cost(r.get("cost") or {}),
            })  # fmt: skip
    return pd.DataFrame(rows)


def probe_frame(results_dir: Path) -> pd.DataFrame:
    rows = []
    for config, metrics in _runs(results_dir):
        target = metrics.get("target") or config.get("target_name")
        for r in metrics.get("rows", []):
            if r["attack"] != "probe":
                continue
            s = r.get("setting") or {}
            for layer, base, unlearned in r["probe"]["per_layer"]:
                rows.append({"target": target, "layer": int(layer), "probe acc base %": f"{base * 100:.1f}",
                             "probe acc unlearned %": f"{unlearned * 100:.1f}",
                             "questions (train / test)": f"{s.get('train')} / {s.get('test')}",
                             "cost": _cost(r.get("cost") or {})})  # fmt: skip
    return pd.DataFrame(rows)


def attack_tables(results_dir: Path) -> list[tuple[str, str, pd.DataFrame]]:
    """(title, intro, table) for the report: attacks per target (and probes when any ran); empty when
    no attack run completed."""
    from unlearn.report.extras import non_empty

    return non_empty(results_dir, [("Attacks: is the knowledge gone, or only hidden?", ATTACK_INTRO, attack_frame),
                                   ("Linear probes: is the answer still decodable?", PROBE_INTRO, probe_frame)])  # fmt: skip
