"""Data parallelism under `accelerate launch`: batches split across ranks, results gathered on every rank.

`accelerate launch --num_processes N -m unlearn.cli eval ...` (add `--cpu` for CPU processes on the gloo
backend) starts N copies of a command; each loads the model and walks the same code. Where a loop owns
its batches (the cloze and letter scorers, the feature counters), rank r forwards batches r, r + N, ...
of the *same* batches one process forms (`Shard`), so every forward sees the tensors it would see alone
and the per-question scores come back bit for bit; `merge` gathers them (accelerate's `gather_object`)
so that every rank holds the full, identical result and takes the same next step. Float counters summed
over batches are added per rank, then over ranks in rank order: equal within float rounding (integer
counts exactly). Rank 0 alone writes the run folder (`rank_zero_run`) and prints.

The scorers split their batches only inside `sharded()`, which `eval.suite` enters where nothing else
observes the forward (no hook, or a hook whose logs are discarded): a hook that records statistics
(gate firing rates, edit sizes) runs on every batch on every rank. Single process (`WORLD_SIZE` unset
or 1): every helper is a no-op and no accelerate state is created.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T", np.ndarray, torch.Tensor)

_DEPTH = [0]
"""Nesting depth of `sharded()` blocks."""


def world_size() -> int:
    """Processes launched together (`WORLD_SIZE`, set by `accelerate launch` / torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_distributed() -> bool:
    return world_size() > 1


@cache
def _state():
    from accelerate import PartialState

    # joins the process group on first use: nccl on GPUs; gloo on CPUs, where torchrun-style launchers
    # (`accelerate launch --multi_gpu`, `torchrun`) do not set accelerate's own CPU flag
    return PartialState(cpu=not torch.cuda.is_available())


def rank() -> int:
    return _state().process_index if is_distributed() else 0


def is_main() -> bool:
    """Rank 0, or the only process."""
    return rank() == 0


def device() -> torch.device | None:
    """This rank's device (`cuda:LOCAL_RANK` on GPUs); None without a launch (callers keep their default)."""
    return _state().device if is_distributed() else None


@contextmanager
def sharded(on: bool = True) -> Iterator[None]:
    """Inside, `Shard()` loops split their batches across ranks (when launched distributed and `on`)."""
    _DEPTH[0] += int(on)
    try:
        yield
    finally:
        _DEPTH[0] -= int(on)


class Shard:
    """Round-robin ownership of a loop's batches, counted across the loop's groups: batch i is this rank's
    when i % world == rank. The batches come longest first, so round-robin (unlike contiguous slices,
    `split_between_processes`) gives every rank a similar amount of work. Inactive: every batch is ours."""

    def __init__(self, *, force: bool = False):
        self.active = is_distributed() and (force or _DEPTH[0] > 0)
        self.rank, self.world = (rank(), world_size()) if self.active else (0, 1)
        self._i = -1

    def take(self) -> bool:
        """Is the next batch this rank's?"""
        self._i += 1
        return self._i % self.world == self.rank

    def merge(self, value: T, filled: T) -> T:
        """`value` with every rank's `filled` entries (a bool mask of its shape) copied in: exact, since
        nothing is added. Every rank gets the same array."""
        if not self.active:
            return value
        from accelerate.utils import gather_object

        mine = (_cpu(filled), _cpu(value))
        out = value.copy() if isinstance(value, np.ndarray) else value.clone()
        parts = gather_object([mine])
        if any(tuple(got.shape) != tuple(value.shape) for _, got in parts):
            raise RuntimeError(f"ranks scored different inputs: shapes {[tuple(g.shape) for _, g in parts]}")
        for got_filled, got in parts:
            if isinstance(out, torch.Tensor):
                got_filled, got = got_filled.to(out.device), got.to(out.device)
            out[got_filled] = got[got_filled]
        return out

    def sum(self, values: list[Any]) -> list[Any]:
        """Each value (tensor or number) summed over ranks in rank order; the same on every rank."""
        if not self.active:
            return values
        from accelerate.utils import gather_object

        parts = gather_object([[_cpu(v) for v in values]])
        total = [_ordered_sum([p[i] for p in parts]) for i in range(len(values))]
        return [
            t.to(v.device) if isinstance(v, torch.Tensor) else t for t, v in zip(total, values, strict=True)
        ]


def from_rank_zero(obj: Any) -> Any:
    """Rank 0's `obj` on every rank: for a decision that picks what the ranks then score together (which
    questions a hook touches), so kernels that round differently on two devices cannot split the ranks."""
    if not is_distributed():
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj])[0]


def _ordered_sum(items: list):
    total = items[0]
    for item in items[1:]:
        total = total + item
    return total


def _cpu(x):
    return x.detach().cpu() if isinstance(x, torch.Tensor) else x


def quiet_other_ranks() -> None:
    """Ranks > 0 print nothing (tables, progress) and log only errors: rank 0 speaks for the run."""
    if is_distributed() and not is_main():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        import logging

        logging.getLogger().setLevel(logging.ERROR)


@contextmanager
def rank_zero_run(
    open_here: Callable[[], AbstractContextManager], make_run: Callable[..., Any]
) -> Iterator[Any]:
    """Rank 0 opens the real run folder (`open_here()`); every other rank works in a private copy of it
    taken right after (deleted on exit), so each rank reads back the same files (a resumed run's finished
    points) and writes the same ones, and only rank 0's reach the results tree. An error opening it on
    rank 0 (a run id in use) is raised on every rank."""
    from accelerate.utils import broadcast_object_list

    from unlearn.errors import UnlearnError

    state = _state()
    with ExitStack() as stack:
        if is_main():
            try:
                run = stack.enter_context(open_here())
            except BaseException as exc:
                broadcast_object_list([("error", f"{exc}")])
                raise
            broadcast_object_list([("ok", str(run.path), run.started, run.resumed)])
            state.wait_for_everyone()  # the others copy the folder before rank 0 writes on
            yield run
            return
        message = broadcast_object_list([None])[0]
        if message[0] == "error":
            raise UnlearnError(message[1])
        _, path, started, resumed = message
        mirror = Path(tempfile.mkdtemp(prefix=f"unlearn-rank{rank()}-"))
        atexit.register(shutil.rmtree, mirror, True)  # at exit: a caller may read its run back
        copy = mirror / Path(path).name
        shutil.copytree(path, copy)
        state.wait_for_everyone()
        yield make_run(path=copy, started=started, resumed=resumed)
