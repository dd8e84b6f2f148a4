"""The results tree: `results/<command>/<run-id>/` with `config.json`, `metrics.json` and tables.

Every file is written atomically (temp file + `os.replace`), so an interrupted run never leaves a
half-written file that a resume or `unlearn report` would trust. `report` reads only this tree.

Layout (every `config.json` holds at least `command`, `preset` (or null) and `model`):
- `eval/<id>/`: `metrics.json` = an evaluation block, `questions.csv` (one row per question).
- `select-features/<id>/`: `features.json`, `stats.csv`.
- `intervene/<id>/`: `baseline.json` (evaluation block of the unhooked model), `points/<point>.json` =
  `{"mode", "scale", "n_features", "features", "metrics": <evaluation block>}`, `summary.csv`.
- `rmu-baseline/<id>/`: `metrics.json` = `{"before": block, "after": block}`, `losses.csv`, `loss.png`,
  `weights.safetensors` (the changed matrices only).

An *evaluation block* is `EvalBlock` as JSON: the protocol, the question subset, one `TaskScore` per
task (an MMLU subject or an offline retain subject is its own task) and pooled forget/retain accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from unlearn.paths import results_dir


@dataclasses.dataclass
class TaskScore:
    """Accuracy of one task under one protocol; `role` says whether it measures forgetting or side effects."""

    task: str  # "wmdp-bio", "mmlu:high_school_geography", "offline:bio", "offline:retain/history"
    role: str  # "forget" | "retain" | "other"
    protocol: str  # "letter" | "letter-perm24" | "cloze" | "lm-eval"
    subset: str  # "all" | "known" (right in every answer permutation, for the unhooked model)
    n: int
    acc: float  # on `subset` (relative to what the unhooked model knows, the paper's number)
    acc_norm: float | None = None  # cloze: length-normalised accuracy
    split: str | None = None  # "all" | "dev" | "test" half of the question set; None in old results
    ci: list[float] | None = None  # 95% percentile bootstrap [low, high] of `acc`
    acc_all: float | None = None  # absolute: every question of the split, known or not
    n_all: int | None = None
    ci_all: list[float] | None = None
    acc_mi: float | None = None  # cloze: mutual-information score (lm-eval's acc_mutual_info), on `subset`


@dataclasses.dataclass
class EvalBlock:
    """What `metrics.json` stores for one evaluated model state: per-task scores and pooled accuracies."""

    protocol: str
    subset: str
    scores: list[TaskScore]
    forget_acc: float | None = None  # pooled over forget tasks (question-weighted)
    retain_acc: float | None = None  # pooled over retain tasks (question-weighted), as SAEBench pools
    split: str | None = None  # None in results written before splits existed
    forget_ci: list[float] | None = None  # 95% bootstrap, stratified by task
    retain_ci: list[float] | None = None
    forget_acc_all: float | None = None  # absolute (every question of the split)
    forget_ci_all: list[float] | None = None
    retain_acc_all: float | None = None
    retain_ci_all: list[float] | None = None

    @staticmethod
    def pooled(scores: list[TaskScore], role: str) -> float | None:
        chosen = [s for s in scores if s.role == role]
        total = sum(s.n for s in chosen)
        return sum(s.acc * s.n for s in chosen) / total if total else None

    @classmethod
    def from_scores(cls, scores: list[TaskScore]) -> EvalBlock:
        protocols = sorted({s.protocol for s in scores})
        subsets = sorted({s.subset for s in scores})
        splits = sorted({s.split for s in scores if s.split})
        return cls(
            protocol="+".join(protocols),
            subset="+".join(subsets),
            scores=scores,
            forget_acc=cls.pooled(scores, "forget"),
            retain_acc=cls.pooled(scores, "retain"),
            split="+".join(splits) or None,
        )

    @classmethod
    def from_dict(cls, d: dict) -> EvalBlock:
        """Tolerant of results written before a field existed (it keeps its default) and after (unknown
        keys are dropped), so old and new runs load side by side."""
        task_keys = {f.name for f in dataclasses.fields(TaskScore)}
        block_keys = {f.name for f in dataclasses.fields(cls)} - {"scores"}
        scores = [TaskScore(**{k: v for k, v in s.items() if k in task_keys}) for s in d["scores"]]
        return cls(**{k: v for k, v in d.items() if k in block_keys}, scores=scores)


def new_run_dir(command: str, run_id: str | None = None, root: Path | None = None) -> Path:
    """Create `results/<command>/<run-id>/`; the default id sorts by time (`20261126-110501`)."""
    root = root or results_dir()
    run_id = run_id or datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / command / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def latest_run_dir(command: str, root: Path | None = None, require: str = "config.json") -> Path | None:
    """Newest run folder of a command holding `require`, or None."""
    base = (root or results_dir()) / command
    runs = sorted(p for p in base.glob("*") if (p / require).exists()) if base.exists() else []
    return runs[-1] if runs else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode a plain open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: Path, obj: Any) -> None:
    data = json.dumps(obj, indent=2, default=_jsonable).encode()
    _atomic_write(Path(path), lambda f: f.write(data + b"\n"))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_table(path: Path, df: pd.DataFrame) -> None:
    """CSV (or parquet by suffix), atomically."""
    path = Path(path)
    if path.suffix == ".parquet":
        _atomic_write(path, lambda f: df.to_parquet(f, index=False))
    else:
        _atomic_write(path, lambda f: f.write(df.to_csv(index=False).encode()))


def write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(Path(path), lambda f: f.write(data))
