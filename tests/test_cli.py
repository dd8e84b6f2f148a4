"""The CLI lists its commands, runs `info`, and turns user errors into one clear message."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from unlearn.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "info" in result.output


def test_info_on_local_model(tiny_folder):
    result = runner.invoke(
        app, ["info", "--model", str(tiny_folder("gemma2")), "--hook", "blocks.2.attn.hook_z"]
    )
    assert result.exit_code == 0, result.output
    assert "Gemma2ForCausalLM" in result.output
    assert "blocks.2.attn.hook_z" in result.output


def test_user_error_is_one_message_not_a_traceback():
    proc = subprocess.run(
        [sys.executable, "-c", "from unlearn.cli import main; main()", "info", "--preset", "gemma-9"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Unknown preset 'gemma-9'" in proc.stderr
    assert "Traceback" not in proc.stderr
