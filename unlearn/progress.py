"""The one progress-bar builder: every long loop (feature counting, RMU, SAE training, activation
collection, SAE quality, evaluation) shows rich's bar through `progress_bar`.

One meaning per parameter name: `progress: bool` says whether a function shows a bar; a function that
draws onto its caller's bar takes `bar: Progress | None`; one that only reports work done takes
`advance: Callable[[int], None] | None`.
"""

from __future__ import annotations

from typing import Literal

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class TokensPerSecond(ProgressColumn):
    """The task's throughput in tokens per second (rich's own speed estimate)."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:,.0f} tok/s" if task.speed else "… tok/s", style="progress.data.speed")


def progress_bar(
    label: str,
    *fields: str,
    clock: Literal["remaining", "elapsed"] | None = "remaining",
    tokens_per_second: bool = False,
    enabled: bool = True,
    transient: bool = False,
) -> Progress:
    """`label`, bar, `done/total`, then the throughput and the clock if asked, then each named task
    field (`bar.add_task(..., name="")`, set by `bar.update(task, name=...)`). Disabled: draws nothing."""
    columns: list[ProgressColumn] = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    if tokens_per_second:
        columns.append(TokensPerSecond())
    if clock is not None:
        columns.append(TimeRemainingColumn() if clock == "remaining" else TimeElapsedColumn())
    columns += [TextColumn(f"{{task.fields[{name}]}}") for name in fields]
    from unlearn.distributed import is_main

    return Progress(*columns, disable=not (enabled and is_main()), transient=transient)  # rank 0 draws
