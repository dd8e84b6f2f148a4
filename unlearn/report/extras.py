"""Report tables beside the forget/retain sections: each gate's threshold and measured firing rates, the
dilution check (forget accuracy as unrelated text is put before the question), and the attacks
(`unlearn.report.attacks`).

Read straight from completed intervene runs (`points/*.json` record their `gate`; `dilution/*.json` the
check of `unlearn.clamp.dilution`); killed or failed runs are never read. Each table is returned as
(title, intro, display frame) for `unlearn.report.render`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from unlearn.results import is_complete

Table = tuple[str, str, pd.DataFrame]


def _runs(results_dir: Path, command: str) -> list[Path]:
    return [p for p in sorted((results_dir / command).glob("*")) if p.is_dir() and is_complete(p)]


def _pct(x) -> str:
    return "" if x is None else f"{100 * float(x):.1f}%"


def gate_table(results_dir: Path) -> pd.DataFrame:
    """One row per gated point: its rule, τ, the target rate (and the filler length of the dev questions
    it was set on, `--gate-prefix`) and every measured firing rate."""
    rows = []
    for run in _runs(results_dir, "intervene"):
        for f in sorted((run / "points").glob("*.json")):
            gate = json.loads(f.read_text()).get("gate")
            if not gate:
                continue
            rates = gate.get("measured_fpr") or {}
            row = {"run": run.name, "point": f.stem, "gate": gate["kind"], "evidence": gate.get("evidence"),
                   "τ": f"{gate['threshold']:.4g}", "target FPR": _pct(gate.get("target_fpr")),
                   "calibrated behind": f"{gate.get('calibration_prefix', 0)} tokens"}  # fmt: skip
            row |= {f"fires: {k}": _pct(v) for k, v in sorted(rates.items())}
            rows.append(row)
    return pd.DataFrame(rows)


def _cell(acc: float, ci) -> str:
    return f"{acc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{acc:.3f}"


def dilution_table(results_dir: Path) -> pd.DataFrame:
    """Forget accuracy (known questions, 95% interval) per prefix length, the unhooked model first, the
    gate's firing rate, and the control: known retain questions behind the same text (accuracy, the gate's
    firing rate, the hook's reach); the largest drop of a point's forget-accuracy *increase* is what dilution costs."""
    rows = []
    for run in _runs(results_dir, "intervene"):
        folder = run / "dilution"
        if not (folder / "baseline.json").exists():
            continue
        files = [folder / "baseline.json"] + sorted(p for p in folder.glob("*.json") if p.stem != "baseline")
        for f in files:
            d = json.loads(f.read_text())
            row = {"run": run.name, "point": d.get("point", "unhooked")}
            for n, acc, ci, fired in zip(d["prefix_tokens"], d["acc"], d["ci"], d["fired"], strict=True):
                row[f"forget @N={n}"] = _cell(acc, ci)
                if fired is not None:
                    row[f"fires @N={n}"] = _pct(fired)
            benign = d.get("benign") or {}
            for k, n in enumerate(benign.get("prefix_tokens", [])):
                if "acc" in benign:  # (runs of stop 9 kept only the rates)
                    row[f"retain @N={n}"] = _cell(benign["acc"][k], benign["ci"][k])
                for key, name in (("fired", "fires"), ("touched", "changed")):
                    if benign.get(key) and benign[key][k] is not None:
                        row[f"retain: {name} @N={n}"] = _pct(benign[key][k])
            if f.stem != "baseline":
                first = d["acc"][0]
                row["max rise vs N=0"] = f"{max(a - first for a in d['acc']):+.3f}"
                row["max |change| vs N=0"] = f"{max(abs(a - first) for a in d['acc']):.3f}"
            rows.append(row)
    return pd.DataFrame(rows)


GATE_INTRO = (
    "Each gate's threshold τ is set on the dev retain questions for the target false-positive rate, from "
    "the gate's statistic on the sequences the scorer really forwards; `fires: retain_test` is the measured "
    "false-positive rate, `fires: forget_test` how much of the topic the gate catches, `benign:` how often "
    "benign biology is blocked."
)
DILUTION_INTRO = (
    "Known forget questions with N tokens of retain text put before them. A gate whose statistic a prefix "
    "can dilute lets forget accuracy climb back as N grows; an edit that also lands in the prefix (the "
    "static clamp, a gate with span `sequence`) pushes it down instead. A dilution-resistant gate keeps it "
    "near its N = 0 value (`max |change|`). The unhooked row shows what the prefix alone does. The control "
    "`retain` columns: known retain questions behind the same text, their accuracy, the share the gate "
    "fires on and the share the hook changes; a gate that fires on most of them at some N is blocking long "
    "prompts, not resisting dilution, and their accuracy is what that costs."
)


def non_empty(results_dir: Path, builders) -> list[Table]:
    """(title, intro, table) for each (title, intro, build) whose `build(results_dir)` has rows."""
    return [(title, intro, df) for title, intro, build in builders if len(df := build(results_dir))]


def extra_tables(results_dir: Path) -> list[Table]:
    from unlearn.report.attacks import attack_tables

    builders = [("Gates: thresholds and firing rates", GATE_INTRO, gate_table),
                ("Dilution check", DILUTION_INTRO, dilution_table)]  # fmt: skip
    return non_empty(results_dir, builders) + attack_tables(results_dir)
