"""The `unlearn` command line: a thin typer layer; every command lives with its `run_*` function."""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

from unlearn import demo, distributed, info
from unlearn.attacks import run as attack
from unlearn.clamp import intervene, screen, select, topics
from unlearn.errors import UnlearnError
from unlearn.eval import run as eval_run
from unlearn.options import writes_results
from unlearn.report import run as report
from unlearn.rmu import run as rmu
from unlearn.sae import train as train_sae

app = typer.Typer(
    help="SAE-based unlearning experiments: select features, clamp them, compare with RMU, report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """SAE-based unlearning experiments: select features, clamp them, compare with RMU, report."""


# In pipeline order, as `unlearn --help` lists them; every command that writes takes --results DIR.
app.command("info")(info.info_command)
app.command("list-saes")(info.list_saes_command)
app.command("eval")(writes_results(eval_run.eval_command))
app.command("select-features")(writes_results(select.select_features_command))
app.command("intervene")(writes_results(intervene.intervene_command))
app.command("screen-features")(writes_results(screen.screen_features_command))
app.command("cross-topic")(writes_results(topics.cross_topic_command))
app.command("rmu-baseline")(writes_results(rmu.rmu_baseline_command))
app.command("attack")(writes_results(attack.attack_command))
app.command("report")(report.report_command)
app.command("train-sae")(writes_results(train_sae.train_sae_command))
app.command("demo")(writes_results(demo.demo_command))


def main() -> None:
    """Entry point: user errors print as one red message (exit 2) instead of a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])
    distributed.quiet_other_ranks()  # under `accelerate launch`, rank 0 prints for the run
    try:
        app()
    except UnlearnError as exc:
        if distributed.is_main():  # every rank meets the same error; one says it
            Console(stderr=True).print(f"[bold red]error:[/] {exc}")
        sys.exit(2)
    except KeyboardInterrupt:  # the run folder (if one was open) is already marked FAILED
        Console(stderr=True).print("[bold red]interrupted[/]: the run was marked FAILED and is not a result")
        sys.exit(130)


if __name__ == "__main__":  # `accelerate launch -m unlearn.cli ...`
    main()
