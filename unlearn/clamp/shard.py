"""Sweep fan-out: `intervene --shard I/N` runs a disjoint share of a sweep's points into one run folder.

Why: given the unhooked baseline, a sweep's points are independent, so N processes (SLURM array jobs,
several GPUs, several machines sharing a file system) can each take a share and write into the same
`results/intervene/<run-id>/`, as SLURM job arrays split one job over task ids (`SLURM_ARRAY_TASK_ID`).

- Partition: point k of the sweep's canonical order (`grid` → `with_gates`: each point followed by its
  controls) goes to shard `k mod N + 1` (shards are 1-based: `1/N` .. `N/N`). Deterministic, disjoint,
  covering; every shard's load differs by at most one point.
- Every shard computes the unhooked baseline it needs (from the known-subset pass: no extra forward) and
  writes `baseline.json` only where it is missing, atomically; the content is the same bit for bit in
  every shard (seeded bootstrap), so the folder holds exactly one. Each point is written atomically
  (`unlearn.results.write_json`), so a killed shard leaves no half point.
- `config.json` is created exclusively (`os.link` of a complete temp file: atomic, also on NFS) by the
  first shard; every later shard compares its own settings with it, all keys, and stops with an error
  naming what differs. It records `"shards": N`.
- `shards/<I>-of-<N>.json` holds each shard's status (`started` / `finished` / `failed`, its points,
  pid, host, times, the error). The shard that finishes last writes `summary.csv` and `complete.json`;
  `unlearn report` reads a sharded run only when every shard is `finished` and every point it lists
  exists (`shard_state`), and names the missing, failed or unfinished shards otherwise.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from unlearn.errors import UnlearnError
from unlearn.paths import results_dir
from unlearn.results import COMPLETE_FILE, Run, _jsonable, _now, check_run_id, read_json, write_json

SHARDS_DIR = "shards"
T = TypeVar("T")


class Shard(NamedTuple):
    index: int  # 1-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def file(self) -> str:
        return f"{SHARDS_DIR}/{self.index}-of-{self.count}.json"


def parse_shard(text: str) -> Shard:
    """`I/N` with 1 ≤ I ≤ N (1-based, as `1/4` .. `4/4`)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise UnlearnError(
            f"--shard {text!r} is not I/N with 1 <= I <= N (1-based): pass e.g. --shard 1/4 ... --shard 4/4"
        )
    return Shard(int(m[1]), int(m[2]))


def shard_points(points: Sequence[T], shard: Shard | None) -> list[T]:
    """The points shard I/N runs: every k-th point of the canonical order with k mod N = I - 1."""
    if shard is None:
        return list(points)
    return [p for k, p in enumerate(points) if k % shard.count == shard.index - 1]


@dataclass
class FanoutFlags:
    """The flags that split a sweep over processes or jobs (`intervene`)."""

    shard: str | None = None
    """Run only shard I of N (1-based: 1/4 .. 4/4): every N-th point of the sweep, into the run folder all
    shards share; every shard needs the same --run-id and the same settings. `report` reads the run once
    all N finished."""
    shards: int | None = None
    """With --launcher: submit the sweep as this many jobs (shards 1/N .. N/N), wait, print the merged
    summary."""
    launcher: str | None = None
    """How --shards jobs run: submitit (SLURM where sbatch exists, else local processes; needs
    `pip install 'unlearn[slurm]'`)."""
    submitit_cluster: str | None = None
    """submitit executor instead of auto-detection: slurm, local (one process per shard here) or debug
    (in this process, one shard after another)."""
    submitit_folder: str | None = None
    """Folder for the jobs' pickles and logs (default: <results>/.submitit/intervene/<run-id>)."""
    slurm_partition: str | None = None
    """SLURM partition of the jobs."""
    slurm_time: int = 60
    """Time limit of each job in minutes."""
    slurm_gpus_per_node: int | None = None
    """GPUs per job."""
    slurm_cpus_per_task: int | None = None
    """CPU cores per job."""
    slurm_mem_gb: float | None = None
    """Memory per job in GB."""
    slurm_array_parallelism: int | None = None
    """At most this many jobs running at once."""


def check_shard_flags(command: str, run_id: str | None, shard: Shard, *, resume: bool, overwrite: bool,
                      settings: dict, root: Path | None = None) -> None:  # fmt: skip
    """What a shard would refuse, checked before any model loads: no --run-id, --overwrite (it would clear
    the other shards' points), a shard that already ran (without --resume), or an existing run made with
    other sweep settings (`settings`: the config.json keys known from the flags alone)."""
    if not run_id:
        raise UnlearnError(f"--shard {shard} needs --run-id NAME, the same for every shard of the sweep")
    path = (root or results_dir()) / command / check_run_id(run_id)
    if overwrite:
        raise UnlearnError(
            f"--overwrite with --shard {shard} would clear the other shards' points: delete {path} "
            "yourself, pass a new --run-id, or --resume to continue this shard"
        )
    if (path / shard.file).exists() and not resume:
        raise UnlearnError(
            f"shard {shard} of run {path} already ran: pass --resume to continue it (finished points are "
            "kept), or a new --run-id"
        )
    if (path / "config.json").exists():
        try:
            old = read_json(path / "config.json")
        except (OSError, ValueError) as e:
            raise UnlearnError(f"cannot join run {path}: its config.json is unreadable ({e})") from e
        _check_same(path, old, {**settings, "shards": shard.count}, keys=[*settings, "shards"])


def _roundtrip(v: Any) -> Any:
    return json.loads(json.dumps(v, default=_jsonable))


def _check_same(path: Path, old: dict, want: dict, keys: Sequence[str] | None = None) -> None:
    keys = sorted(set(old) | set(want)) if keys is None else keys
    diff = [k for k in keys if _roundtrip(old.get(k)) != _roundtrip(want.get(k))]
    if diff:
        shown = "; ".join(f"{k}: run has {old.get(k)!r}, this shard {want.get(k)!r}" for k in diff[:3])
        raise UnlearnError(
            f"run {path} holds another sweep ({', '.join(diff)} differ from its config.json: {shown})"[:900]
            + "; every shard of a run needs the same settings: start this shard with the flags the others "
            "got, or pass a new --run-id"
        )


def _claim_config(path: Path, want: dict) -> None:
    """Create `config.json` exclusively (temp file, then `os.link`: fails if it exists), else compare."""
    data = json.dumps(want, indent=2, default=_jsonable, allow_nan=False).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".config.json.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path / "config.json")
            return
        except FileExistsError:
            pass
    finally:
        Path(tmp).unlink(missing_ok=True)
    try:
        old = read_json(path / "config.json")
    except (OSError, ValueError) as e:
        raise UnlearnError(f"cannot join run {path}: its config.json is unreadable ({e})") from e
    if "shards" not in old:
        raise UnlearnError(f"run {path} is not a sharded run: pass a new --run-id for a sharded sweep")
    _check_same(path, old, want)


@dataclass
class ShardState:
    """Where each shard of a sharded run stands (`shard_state`)."""

    count: int
    finished: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line per shard that is not done

    @property
    def complete(self) -> bool:
        return not self.problems and len(self.finished) == self.count

    def describe(self) -> str:
        return f"{len(self.finished)} of {self.count} shards finished; " + "; ".join(self.problems)


def shard_state(run_dir: Path) -> ShardState | None:
    """The shards of a sharded run (None: the run is not sharded, or its config.json is unreadable, which
    the caller reports as for any run). A shard counts as finished when its status says so and every point
    it lists exists."""
    try:
        count = read_json(run_dir / "config.json").get("shards")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(count, int):
        return None
    state = ShardState(count)
    for i in range(1, count + 1):
        shard = Shard(i, count)
        try:
            st = read_json(run_dir / shard.file)
        except FileNotFoundError:
            state.problems.append(f"shard {shard} never started: run it with --shard {shard}")
            continue
        except (OSError, ValueError) as e:
            state.problems.append(f"shard {shard}: unreadable status ({e})")
            continue
        status = st.get("status") if isinstance(st, dict) else None
        if status == "failed":
            state.problems.append(f"shard {shard} failed ({str(st.get('error'))[:160]}): rerun it with "
                                  f"--shard {shard} --resume")  # fmt: skip
        elif status != "finished":
            state.problems.append(f"shard {shard} started {st.get('started')} (pid {st.get('pid')} on "
                                  f"{st.get('host')}) and has not finished: still running, or killed")  # fmt: skip
        else:
            lost = [p for p in st.get("points", []) if not (run_dir / "points" / f"{p}.json").exists()]
            if lost:
                state.problems.append(f"shard {shard} finished but points/{lost[0]}.json is missing "
                                      f"({len(lost)} lost): rerun it with --shard {shard} --resume")  # fmt: skip
            else:
                state.finished.append(i)
    return state


def finalize(run_dir: Path, on_complete: Callable[[Path], None] | None = None) -> bool:
    """Once every shard finished: `on_complete` (the merged summary), then `complete.json`. Idempotent;
    any shard (and the launcher) may call it."""
    state = shard_state(run_dir)
    if state is None or not state.complete:
        return False
    if on_complete is not None:
        on_complete(run_dir)
    write_json(run_dir / COMPLETE_FILE, {"started": None, "finished": _now(), "shards": state.count})
    return True


@contextmanager
def open_shard(command: str, identity: dict, config: dict, run_id: str, shard: Shard, points: list[str],
               *, on_complete: Callable[[Path], None] | None = None,
               root: Path | None = None) -> Iterator[Run]:  # fmt: skip
    """Join (or create) `results/<command>/<run_id>/` as shard `shard` running `points`; see the module
    docstring for the files. A failure (Ctrl-C too) marks this shard `failed`, never the whole run."""
    path = (root or results_dir()) / command / check_run_id(run_id)
    path.mkdir(parents=True, exist_ok=True)
    _claim_config(path, {**identity, **config, "shards": shard.count})
    run = Run(command, path, _now(), resumed=(path / shard.file).exists())
    (path / COMPLETE_FILE).unlink(missing_ok=True)  # not complete while a shard runs
    status = {"shard": shard.index, "of": shard.count, "points": points, "pid": os.getpid(),
              "host": socket.gethostname(), "started": run.started}  # fmt: skip
    write_json(path / shard.file, {**status, "status": "started"})
    try:
        yield run
    except BaseException as exc:
        msg = f"{type(exc).__name__}: {exc}".strip()
        write_json(path / shard.file, {**status, "status": "failed", "error": msg, "finished": _now()})
        raise
    write_json(path / shard.file, {**status, "status": "finished", "finished": _now()})
    finalize(path, on_complete)
