"""One rule for `--preset`/`--model` (`unlearn.setup`): every command resolves the same flags to the same setup."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import unlearn.models
from unlearn.cli import app
from unlearn.errors import UnlearnError
from unlearn.presets import get_preset
from unlearn.setup import resolve_setup

HUB_MODEL = "some-org/some-model"  # a hub id: nothing is downloaded, load_model is stopped first


class Loaded(Exception):
    """Raised by the stand-in `load_model`, carrying the setup the command asked to load."""

    def __init__(self, setup):
        super().__init__("load_model reached")
        self.setup = setup


def test_rule_neither_preset_only_both_model_only():
    default = resolve_setup()
    assert default.preset_name == "gemma-3-270m" and default.model.source == "embedded:gemma-3-270m"
    assert default.name == "gemma-3-270m" and default.hook_for().layer == 6

    p = get_preset("gemma-2-2b-it")
    preset = resolve_setup("gemma-2-2b-it")
    assert (preset.model.source, preset.model.dtype, preset.rmu["layer"]) == (p.model, "bfloat16", 3)

    both = resolve_setup("gemma-2-2b-it", HUB_MODEL)
    assert both.preset_name == "gemma-2-2b-it" and both.model.source == HUB_MODEL and both.name == HUB_MODEL
    assert (both.rmu, both.eval, both.select, both.sae_spec()) == (p.rmu, p.eval, p.select, p.sae)
    assert both.model.dtype == "bfloat16" and both.hook_for().name == "blocks.3.hook_resid_post"

    alone = resolve_setup(model=HUB_MODEL)
    assert alone.preset is None and alone.name == HUB_MODEL and alone.model.dtype == "auto"
    assert (alone.rmu, alone.eval, alone.sae_spec(), alone.hook_for()) == ({}, {}, None, None)


def test_flags_win_and_bad_flags_fail_before_loading(tmp_path):
    s = resolve_setup("gemma-2-2b-it", sae="my/sae", hook="blocks.2.hook_resid_post")
    assert s.sae_spec("selection/sae") == "my/sae" and s.hook_for("blocks.9.hook_resid_post").layer == 2
    s = resolve_setup("gemma-2-2b-it")
    assert (
        s.sae_spec("selection/sae") == "selection/sae" and s.hook_for("blocks.9.hook_resid_post").layer == 9
    )
    with pytest.raises(UnlearnError, match="Unknown preset"):
        resolve_setup("gemma-9")
    with pytest.raises(UnlearnError, match="pass --preset gemma-2b-it"):
        resolve_setup(model="gemma-2b-it")
    with pytest.raises(UnlearnError, match="no such local file"):
        resolve_setup(model=str(tmp_path / "missing.gguf"))
    with pytest.raises(UnlearnError, match="Unknown hook point"):
        resolve_setup(hook="layer6")


@pytest.fixture
def selection(tmp_path):
    """A select-features result with two bio features, for the commands that read one first."""
    folder = tmp_path / "sel"
    folder.mkdir()
    (folder / "features.json").write_text(
        json.dumps({"sae": None, "hook": None, "topics": {"bio": {"features": [1, 2]}}})
    )
    return folder


RMU_FLAGS = ["--layer", "1", "--alpha", "1", "--lr", "1e-3", "--n-batches", "1", "--batch-size", "1",
             "--max-length", "8", "--steering-coeff", "1", "--forget-source", "f", "--retain-source", "r"]  # fmt: skip
COMMANDS = {  # command -> (module whose load_model it calls, extra arguments it needs to reach the load)
    "info": ("unlearn.info", []),
    "eval": ("unlearn.models", []),
    "select-features": ("unlearn.clamp.select", []),
    "intervene": ("unlearn.clamp.intervene", ["--feature-ids", "1,2"]),
    "screen-features": ("unlearn.models", []),
    "cross-topic": ("unlearn.models", ["--features", "{selection}"]),
    "rmu-baseline": ("unlearn.rmu.run", ["--no-eval"]),
    "attack": ("unlearn.models", []),
    "train-sae": ("unlearn.sae.train", []),
    "demo": ("unlearn.demo", []),
}
FLAGS = {
    "default": [],
    "preset": ["--preset", "gemma-2-2b-it"],
    "preset+model": ["--preset", "gemma-2-2b-it", "--model", HUB_MODEL],
    "model": ["--model", HUB_MODEL],
}


@pytest.mark.parametrize("flags", FLAGS, ids=list(FLAGS))
@pytest.mark.parametrize("command", COMMANDS, ids=list(COMMANDS))
def test_every_command_resolves_the_same_flags_to_the_same_setup(
    command, flags, monkeypatch, tmp_path, selection
):
    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    module, extra = COMMANDS[command]

    def stand_in(setup, *a, **k):
        raise Loaded(setup)

    import importlib

    monkeypatch.setattr(unlearn.models, "load_model", stand_in)
    monkeypatch.setattr(importlib.import_module(module), "load_model", stand_in)
    args = [command, *FLAGS[flags], *[a.format(selection=selection) for a in extra]]
    if command == "rmu-baseline" and flags == "model":
        args += RMU_FLAGS  # --model alone: no preset supplies the RMU settings (tested below)
    if command == "train-sae" and flags == "model":
        args += ["--hook", "blocks.1.hook_resid_post"]  # ... nor the hook point
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, Loaded), (result.output, result.exception)
    got = result.exception.setup
    want = resolve_setup(*{"default": (None, None), "preset": ("gemma-2-2b-it", None),
                           "preset+model": ("gemma-2-2b-it", HUB_MODEL), "model": (None, HUB_MODEL)}[flags])  # fmt: skip
    assert (got.preset, got.model, got.name) == (want.preset, want.model, want.name)


def test_rmu_preset_with_model_uses_the_presets_rmu_settings(monkeypatch, tmp_path):
    """`rmu-baseline --preset gemma-2-2b-it --model M`: layer 3, c 400, α 100 from the preset, model M."""
    import unlearn.rmu.run as rmu

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    seen = {}
    real = rmu.resolve_config

    def record(cfg, setup=None):
        seen["cfg"] = real(cfg, setup)
        return seen["cfg"]

    def stand_in(setup, *a, **k):
        raise Loaded(setup)

    monkeypatch.setattr(rmu, "resolve_config", record)
    monkeypatch.setattr(rmu, "load_model", stand_in)
    result = CliRunner().invoke(
        app, ["rmu-baseline", "--preset", "gemma-2-2b-it", "--model", HUB_MODEL, "--no-eval"]
    )
    assert isinstance(result.exception, Loaded), result.output
    cfg = seen["cfg"]
    assert (cfg.layer, cfg.steering_coeff, cfg.alpha, cfg.lr, cfg.n_batches) == (3, 400.0, 100.0, 5e-5, 300)
    assert result.exception.setup.model.source == HUB_MODEL


def test_rmu_model_alone_without_a_layer_is_a_clear_error(monkeypatch, tmp_path):
    """`--model M` alone: generic defaults, so the RMU layer (and the rest of the RMU settings) must be
    passed; the message names the flags, and nothing loads."""
    import unlearn.rmu.run as rmu

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    monkeypatch.setattr(rmu, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    result = CliRunner().invoke(app, ["rmu-baseline", "--model", HUB_MODEL, "--no-eval"])
    assert isinstance(result.exception, UnlearnError)
    message = str(result.exception)
    assert "--layer" in message and "--steering-coeff" in message and "--preset" in message
    with pytest.raises(UnlearnError, match="--layer"):
        rmu.resolve_config(rmu.RMUConfig(model=HUB_MODEL, alpha=1.0))
