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


def test_info_with_sae_reports_l0_and_rejects_width_mismatch(tiny_folder, tmp_path):
    import torch

    from unlearn.sae.model import SAE

    torch.manual_seed(0)
    sae = SAE(64, 128, "standard", hook_name="blocks.1.hook_resid_post")
    sae.W_enc.normal_()
    sae.W_dec.normal_()
    sae.save(tmp_path / "sae64")
    ok = runner.invoke(app, ["info", "--model", str(tiny_folder("gemma3")), "--sae", str(tmp_path / "sae64")])
    assert ok.exit_code == 0, ok.output
    assert "d_sae 128" in ok.output and "SAE L0" in ok.output

    SAE(32, 128, "standard", hook_name="blocks.1.hook_resid_post").save(tmp_path / "sae32")
    bad = runner.invoke(
        app, ["info", "--model", str(tiny_folder("gemma3")), "--sae", str(tmp_path / "sae32")]
    )
    assert bad.exit_code != 0
    assert "32" in str(bad.exception) and "64" in str(bad.exception)


def test_list_saes():
    result = runner.invoke(app, ["list-saes"])
    assert result.exit_code == 0 and "gemma-scope-2b-pt-res" in result.output
    ids = runner.invoke(app, ["list-saes", "gemma-scope-2b-pt-res"])
    assert "layer_3/width_16k/average_l0_142" in ids.output
