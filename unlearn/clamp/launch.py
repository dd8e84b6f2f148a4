"""`intervene --shards N --launcher submitit`: one job per shard through submitit (SLURM, or local
processes), wait for all, finalise the shared run folder.

submitit (facebookincubator/submitit, `submitit/auto/auto.py`) pickles the function and its config, submits
one job per shard (a SLURM job array under `sbatch`; `LocalExecutor` processes without SLURM; the
`debug` executor runs them in this process), and returns each job's result or raises its exception.
Each job is `run_intervene` with `shard = "I/N"` and the same run id; the folder's own records
(`unlearn.clamp.shard`) say which shards finished, so a job lost by the scheduler shows up in `report`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from rich.console import Console

from unlearn.checks import positive_int
from unlearn.clamp.shard import finalize, shard_state
from unlearn.errors import UnlearnError
from unlearn.paths import results_at, results_dir
from unlearn.results import check_run_id, new_run_id

log = logging.getLogger(__name__)

LAUNCHERS = ("submitit",)
CLUSTERS = ("slurm", "local", "debug")


def _run_shard(cfg, results: str) -> str:
    """One job: shard `cfg.shard` of the sweep into `results` (module level, so submitit can pickle it)."""
    from unlearn.clamp.intervene import run_intervene

    with results_at(results):
        return str(run_intervene(cfg, console=Console()))


def _executor(cfg, folder: Path):
    try:
        import submitit
    except ImportError as e:
        raise UnlearnError(
            "--launcher submitit needs submitit: pip install 'unlearn[slurm]' (or pip install submitit)"
        ) from e
    ex = submitit.AutoExecutor(folder=folder, cluster=cfg.submitit_cluster)
    params = {"name": f"unlearn-intervene-{cfg.run_id}", "timeout_min": cfg.slurm_time,
              "gpus_per_node": cfg.slurm_gpus_per_node, "cpus_per_task": cfg.slurm_cpus_per_task,
              "mem_gb": cfg.slurm_mem_gb, "slurm_partition": cfg.slurm_partition,
              "slurm_array_parallelism": cfg.slurm_array_parallelism}  # fmt: skip
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def check_launch_flags(cfg) -> None:
    """--shards N --launcher L, checked before anything is submitted."""
    if cfg.launcher is None or cfg.shards is None:
        raise UnlearnError(
            "--shards N and --launcher submitit go together (or run one shard with --shard I/N)"
        )
    if cfg.launcher not in LAUNCHERS:
        raise UnlearnError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {cfg.launcher!r}")
    if cfg.shard is not None:
        raise UnlearnError(
            "--shard I/N runs one shard; --shards N --launcher submits all N: pass one of them"
        )
    if cfg.submitit_cluster is not None and cfg.submitit_cluster not in CLUSTERS:
        raise UnlearnError(
            f"--submitit-cluster must be one of {', '.join(CLUSTERS)}, got {cfg.submitit_cluster!r}"
        )
    positive_int(cfg.shards, "--shards")
    positive_int(cfg.slurm_time, "--slurm-time")


def launch_sweep(cfg, *, console: Console) -> Path:
    """Submit shards 1/N .. N/N of `cfg`'s sweep, wait, finalise; returns the run folder (complete, or
    an UnlearnError naming the shards that are not)."""
    from unlearn.clamp.intervene import check_intervene_flags, write_summary

    check_launch_flags(cfg)
    run_id = check_run_id(cfg.run_id) if cfg.run_id else new_run_id()
    shards = [dataclasses.replace(cfg, shard=f"{i}/{cfg.shards}", shards=None, launcher=None, run_id=run_id)
              for i in range(1, cfg.shards + 1)]  # fmt: skip
    for s in shards:  # every flag, and that no shard already ran (unless --resume), before any job
        check_intervene_flags(s)
    root = results_dir().resolve()
    folder = Path(cfg.submitit_folder or root / ".submitit" / "intervene" / run_id)
    ex = _executor(cfg, folder)
    jobs = ex.map_array(_run_shard, shards, [str(root)] * len(shards))
    console.print(f"submitted {len(jobs)} {ex.cluster} jobs for run {run_id} (logs: {folder})")
    errors = []
    for i, job in enumerate(jobs, 1):
        try:
            job.result()
        except Exception as e:  # a failed job: its shard file says "failed"; report the rest first
            errors.append(f"shard {i}/{cfg.shards} (job {job.job_id}): {type(e).__name__}: {e}"[:600])
            log.warning("shard %d/%d failed: %s", i, cfg.shards, e)
    run_dir = root / "intervene" / run_id
    finalize(run_dir, write_summary)  # again here: a shared file system may have hidden the last write
    state = shard_state(run_dir)
    if errors or state is None or not state.complete:
        detail = "\n".join(errors) or (state.describe() if state else f"no sharded run at {run_dir}")
        raise UnlearnError(f"sweep {run_dir} is incomplete:\n{detail}\nrerun the failed shards with "
                           f"--shard I/{cfg.shards} --run-id {run_id} --resume (logs: {folder})")  # fmt: skip
    return run_dir
