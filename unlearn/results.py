"""The results tree: `results/<command>/<run-id>/` with `config.json`, `metrics.json` and tables.

Every file is written atomically (temp file + `os.replace`), so an interrupted run never leaves a
half-written file that a resume or `unlearn report` would trust. `report` reads only this tree, and
only runs that completed (`open_run` below: `RUNNING` first, `complete.json` last, `FAILED` on error).

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
import functools
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from unlearn.errors import UnlearnError
from unlearn.paths import keyed_cache_path, results_dir


@dataclasses.dataclass
class TaskScore:
    """Accuracy of one task under one protocol; `role` says whether it measures forgetting or side effects."""

    task: str  # "wmdp-bio", "mmlu:high_school_geography", "offline:bio", "offline:retain/history"
    role: str  # "forget" | "retain" | "other"
    protocol: str  # "letter" | "letter-perm24" | "cloze" | "lm-eval"
    subset: str  # "all" | "known" (right in every answer permutation, for the unhooked model)
    n: int
    acc: float | None  # on `subset` (relative to what the unhooked model knows, the paper's number);
    # None only when n == 0 (an empty known subset): nothing was scored
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
        chosen = [s for s in scores if s.role == role and s.n]
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

    @classmethod
    def of(cls, block: EvalBlock | dict) -> EvalBlock:
        """`block` itself, or the block its JSON form holds (`from_dict`): for code that reads both a
        fresh run's blocks and a finished run's files."""
        return block if isinstance(block, cls) else cls.from_dict(block)


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
    """Strict JSON (no NaN/Infinity, which strict parsers reject): a non-finite number is an error."""
    try:
        data = json.dumps(obj, indent=2, default=_jsonable, allow_nan=False).encode()
    except ValueError as e:
        raise UnlearnError(
            f"refusing to write {path}: it holds a NaN or infinite number ({e}); the run is marked failed"
        ) from e
    _atomic_write(Path(path), lambda f: f.write(data + b"\n"))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def cached_json(kind: str, key: dict, compute: Callable[[], Any]) -> Any:
    """`compute()`'s JSON value, read from `cache_dir()/kind` when an entry of this very `key` is there,
    else computed and stored. For what every run of one model repeats on the same inputs and is the same
    each time (feature counters of a text, the unhooked model's scores): the key must name everything the
    value depends on. It is stored and compared as JSON reads it back, so a hash collision or an older
    entry is recomputed, never read as a hit; JSON floats round-trip exactly, so a hit equals a fresh
    computation bit for bit."""
    path = keyed_cache_path(kind, key)
    key = json.loads(json.dumps(key, default=_jsonable))
    if path.exists():
        try:
            entry = read_json(path)
        except (OSError, ValueError):  # unreadable: recompute and overwrite
            entry = None
        if isinstance(entry, dict) and entry.get("key") == key and "value" in entry:
            return entry["value"]
    value = compute()
    write_json(path, {"key": key, "value": value})
    return value


def write_table(path: Path, df: pd.DataFrame) -> None:
    """CSV (or parquet by suffix), atomically."""
    path = Path(path)
    if path.suffix == ".parquet":
        _atomic_write(path, lambda f: df.to_parquet(f, index=False))
    else:
        _atomic_write(path, lambda f: f.write(df.to_csv(index=False).encode()))


def write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(Path(path), lambda f: f.write(data))


# ---------------------------------------------------------------- the run lifecycle
#
# A run folder is a unit: `RUNNING` is written first, `complete.json` (with the finish time) last, and a
# failure (any exception, Ctrl-C included) leaves `FAILED` with the error. A folder killed outright keeps
# `RUNNING`. Readers (`report`, `eval --rmu`, `intervene --features`, "latest") take completed runs only.

RUNNING_FILE, FAILED_FILE, COMPLETE_FILE = "RUNNING", "FAILED", "complete.json"
RUN_FILE = "run.json"  # when (and by which process) the run last started; kept through failure
_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_run_id() -> str:
    """Sorts by start time; the random suffix keeps two runs started in the same second apart."""
    return f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def check_run_id(run_id: str) -> str:
    """A run id is a plain folder name: no '/', no '..', not absolute (it names a folder we may clear)."""
    if not isinstance(run_id, str) or not _PLAIN_ID.fullmatch(run_id) or ".." in run_id:
        raise UnlearnError(
            f"--run-id {run_id!r} is not a plain name: use letters, digits, '.', '_', '-' "
            "(no '/', no '..', not an absolute path), e.g. --run-id sweep-1"
        )
    return run_id


def _make_exclusive(base: Path, run_id: str | None) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = base / (run_id or new_run_id())
        try:
            path.mkdir()
            return path
        except FileExistsError:
            if run_id:
                raise
    raise UnlearnError(f"could not create a fresh run folder under {base}")  # pragma: no cover


def new_run_dir(command: str, run_id: str | None = None, root: Path | None = None) -> Path:
    """A bare run folder without lifecycle markers (tests and `report` output); the default id is fresh
    and created exclusively. Commands that produce results use `open_run`."""
    base = (root or results_dir()) / command
    if run_id is None:
        return _make_exclusive(base, None)
    path = base / check_run_id(run_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_complete(run_dir: Path) -> bool:
    """Finished without failure: its completion record exists and no failure marker."""
    return (run_dir / COMPLETE_FILE).is_file() and not (run_dir / FAILED_FILE).exists()


def mark_complete(run_dir: Path, started: str | None = None) -> None:
    """Write the completion record (the run's last file) and drop `RUNNING`."""
    write_json(run_dir / COMPLETE_FILE, {"started": started, "finished": _now()})
    (run_dir / RUNNING_FILE).unlink(missing_ok=True)


def _finished(run_dir: Path) -> str:
    try:
        return str(read_json(run_dir / COMPLETE_FILE).get("finished") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def completed_runs(command: str, root: Path | None = None, require: str | None = None) -> list[Path]:
    """Completed run folders of a command (holding `require` if given), oldest first by finish time."""
    base = (root or results_dir()) / command
    runs = [p for p in base.iterdir() if p.is_dir() and is_complete(p)] if base.is_dir() else []
    runs = [p for p in runs if require is None or (p / require).exists()]
    return sorted(runs, key=lambda p: (_finished(p), p.name))


def latest_run_dir(command: str, root: Path | None = None, require: str = "config.json") -> Path | None:
    """The newest *completed* run of a command by recorded finish time (not by name), or None."""
    runs = completed_runs(command, root, require)
    return runs[-1] if runs else None


def _started(run_dir: Path) -> str:
    try:
        return str(read_json(run_dir / RUN_FILE).get("started") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def _differ(old: dict, identity: dict) -> list[str]:
    return sorted(k for k in identity if _jsonable_roundtrip(old.get(k)) != _jsonable_roundtrip(identity[k]))


def _jsonable_roundtrip(v: Any) -> Any:
    return json.loads(json.dumps(v, default=_jsonable))


def find_resumable(command: str, identity: dict, root: Path | None = None) -> str | None:
    """The newest run (by start time; finished or interrupted) made with the same identity, for --resume."""
    base = (root or results_dir()) / command
    if not base.is_dir():
        return None
    same = []
    for p in base.iterdir():
        try:
            if p.is_dir() and not _differ(read_json(p / "config.json"), identity):
                same.append(p)
        except (OSError, ValueError, AttributeError):
            continue
    return max(same, key=lambda p: (_started(p), p.name)).name if same else None


def check_new_run(
    command: str,
    run_id: str | None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    root: Path | None = None,
) -> None:
    """What `open_run` would refuse, checked before any model loads: a bad id, or an existing run
    re-used without --resume / --overwrite."""
    if run_id is None:
        return
    path = (root or results_dir()) / command / check_run_id(run_id)
    if path.exists() and not (resume or overwrite):
        raise UnlearnError(
            f"run {path} already exists: pass --resume to continue it (same settings), "
            "--overwrite to replace it, or a new --run-id"
        )


@dataclasses.dataclass
class Run:
    """An open run folder; write its files through it (atomic, strict JSON)."""

    command: str
    path: Path
    started: str
    resumed: bool = False

    def write_json(self, name: str, obj: Any) -> Path:
        write_json(self.path / name, obj)
        return self.path / name

    def write_table(self, name: str, df: pd.DataFrame) -> Path:
        write_table(self.path / name, df)
        return self.path / name

    def write_bytes(self, name: str, data: bytes) -> Path:
        write_bytes(self.path / name, data)
        return self.path / name


@contextmanager
def open_run(
    command: str,
    identity: dict,
    *,
    config: dict | None = None,
    run_id: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    root: Path | None = None,
) -> Iterator[Run]:
    """Open `results/<command>/<run-id>/` as one unit and write `config.json` (identity + `config`).

    A fresh id is created exclusively. An existing id needs `resume` (same identity, else an error
    naming what differs; its finished files are kept) or `overwrite` (the folder is cleared first). On
    exit the completion record is written last; on any exception (Ctrl-C too) `FAILED` holds the error.
    Under `accelerate launch` only rank 0 writes it (`unlearn.distributed.rank_zero_run`).
    """
    from unlearn import distributed

    kwargs = {"config": config, "run_id": run_id, "resume": resume, "overwrite": overwrite, "root": root}
    if not distributed.is_distributed():
        with _open_run_here(command, identity, **kwargs) as run:
            yield run
        return
    make = functools.partial(Run, command)
    with distributed.rank_zero_run(lambda: _open_run_here(command, identity, **kwargs), make) as run:
        yield run


@contextmanager
def _open_run_here(
    command: str,
    identity: dict,
    *,
    config: dict | None = None,
    run_id: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    root: Path | None = None,
) -> Iterator[Run]:
    base = (root or results_dir()) / command
    if run_id is not None:
        check_run_id(run_id)
    path = base / run_id if run_id else None
    resumed = False
    if path is not None and path.exists():
        if overwrite:
            if path.resolve().parent != base.resolve() or path.is_symlink():
                raise UnlearnError(f"refusing to clear {path}: it is not a run folder inside {base}")
            shutil.rmtree(path)
        elif resume:
            try:
                old = read_json(path / "config.json")
            except (OSError, ValueError) as e:
                raise UnlearnError(
                    f"cannot resume {path}: its config.json is unreadable ({e}); pass --overwrite or a new --run-id"
                ) from e
            diff = _differ(old, identity)
            if diff:
                raise UnlearnError(
                    f"run {run_id} was made with other settings ({', '.join(diff)} differ); "
                    "pass a new --run-id, or --overwrite to replace it"
                )
            resumed = True
        else:
            raise UnlearnError(
                f"run {path} already exists: pass --resume to continue it (same settings), "
                "--overwrite to replace it, or a new --run-id"
            )
    path = path if resumed else _make_exclusive(base, run_id)
    run = Run(command, path, _now(), resumed)
    (path / COMPLETE_FILE).unlink(missing_ok=True)
    (path / FAILED_FILE).unlink(missing_ok=True)
    write_json(path / RUNNING_FILE, {"started": run.started, "pid": os.getpid()})
    write_json(path / RUN_FILE, {"command": command, "started": run.started, "pid": os.getpid()})
    try:
        write_json(path / "config.json", {**identity, **(config or {})})
        yield run
    except BaseException as exc:
        msg = f"{type(exc).__name__}: {exc}".strip()
        write_bytes(path / FAILED_FILE, (msg + "\n").encode())
        (path / RUNNING_FILE).unlink(missing_ok=True)
        raise
    mark_complete(path, run.started)
