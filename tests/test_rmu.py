"""RMU: losses match their formulas, only the intended matrices move, and the lean trainer (truncated
forward, no second copy) reproduces a plain two-full-copies implementation step by step."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from conftest import FAMILIES
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from unlearn.errors import UnlearnError
from unlearn.models import load_model
from unlearn.presets import get_preset
from unlearn.results import EvalBlock, read_json
from unlearn.rmu.run import (
    RMUConfig,
    absolute_coeff,
    resolve_config,
    rmu_baseline_command,
    run_rmu,
)
from unlearn.rmu.train import (
    RMUTrainer,
    convergence,
    forget_target_scale,
    rmu_mse,
    select_params,
    steering_vectors,
    tokenize,
)
from unlearn.rmu.weights import load_rmu_weights

FORGET = [
    "The mitochondria produce ATP for the cell.",
    "Enzymes are proteins that speed up reactions in the cell nucleus and cytoplasm.",
    "A virus infects a host cell and copies its genes.",
    "Photosynthesis in leaves turns light into sugar.",
] * 3
RETAIN = [
    "History of the city of Rome.",
    "The river flows through the geography of the valley and on to the sea.",
    "Computer science studies algorithms.",
    "the of and a to in is was that for on with as by at from this it an be",
] * 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine two threads thrash (10x)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fresh(tiny, family):
    """A private copy of the session's tiny model (the trainer changes weights in place)."""
    lm = tiny(family)
    return copy.copy(lm).__class__(copy.deepcopy(lm.model), lm.tokenizer, lm.setup)


def batches(lm, texts, bs=3, max_length=24):
    return [
        tokenize(lm.tokenizer, texts[i : i + bs], max_length, lm.model.device)
        for i in range(0, len(texts), bs)
    ]


# ---------------------------------------------------------------- losses on random tensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmu_mse_matches_formula(dtype):
    g = torch.Generator().manual_seed(0)
    acts = (torch.randn(3, 5, 8, generator=g) * 4).to(dtype)
    target = torch.randn(3, 5, 8, generator=g)
    cvec = torch.rand(8, generator=g) * 7
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    a = acts.double().numpy()  # the bf16 values as they are, compared in float64
    t, c, m = target.double().numpy(), cvec.double().numpy(), mask.numpy().astype(bool)
    # upstream (Li et al.): F.mse_loss = mean over all B*T*D elements, padding included
    assert rmu_mse(acts, target).dtype == torch.float32
    np.testing.assert_allclose(rmu_mse(acts, target).item(), ((a - t) ** 2).mean(), rtol=1e-6)
    np.testing.assert_allclose(rmu_mse(acts, cvec).item(), ((a - c) ** 2).mean(), rtol=1e-6)
    # Farrell et al.: sum over real tokens and d_model / number of real tokens
    per_token = ((a - t) ** 2).sum(-1)
    np.testing.assert_allclose(rmu_mse(acts, target, mask).item(), per_token[m].sum() / m.sum(), rtol=1e-6)
    per_token_c = ((a - c) ** 2).sum(-1)
    np.testing.assert_allclose(rmu_mse(acts, cvec, mask).item(), per_token_c[m].mean(), rtol=1e-6)


def test_steering_vectors_are_seeded_positive_and_scaled():
    vecs = steering_vectors(64, 20.0, 2, seed=42)
    again = steering_vectors(64, 20.0, 2, seed=42)
    for v, w in zip(vecs, again, strict=True):
        assert torch.equal(v, w)
        assert v.dtype == torch.float32 and (v >= 0).all()  # torch.rand, not randn (upstream)
        assert v.norm().item() == pytest.approx(20.0, rel=1e-6)
    assert not torch.equal(vecs[0], vecs[1])  # one u per forget source
    gen = torch.Generator().manual_seed(42)
    u = torch.rand(64, generator=gen)
    torch.testing.assert_close(vecs[0], u / u.norm() * 20.0)


# ---------------------------------------------------------------- parameter selection


def test_select_params_by_name_not_position(tiny):
    model = tiny("gemma3").model
    chosen = select_params(model, [0, 1, 2], r"(^|\.)layers\.{layer}\.mlp\.down_proj\.weight$")
    assert list(chosen) == [f"model.layers.{i}.mlp.down_proj.weight" for i in range(3)]
    layer = model.model.layers[1]
    by_position = list(layer.parameters())[6]  # upstream's param_ids=6
    assert by_position is not layer.mlp.down_proj.weight  # on Gemma 3 q_norm/k_norm come first


def test_select_params_errors(tiny):
    model = tiny("gemma2").model
    with pytest.raises(UnlearnError, match="matched 0 parameters"):
        select_params(model, [1], r"layers\.{layer}\.mlp\.nothing$")
    several = select_params(
        model, [1], r"layers\.{layer}\.(mlp\.down_proj|post_feedforward_layernorm)\.weight$"
    )
    assert sorted(several) == [
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.1.post_feedforward_layernorm.weight",
    ]
    with pytest.raises(UnlearnError, match="out of range"):
        select_params(model, [7], r"layers\.{layer}\.mlp\.down_proj\.weight$")


# ---------------------------------------------------------------- the trainer on tiny models


def make_trainer(lm, *, mask_padding=False, lr=5e-5, coeff=20.0, alpha=100.0, layer=2):
    d = lm.model.config.hidden_size
    return RMUTrainer(
        lm.model, layer=layer, update_layers=[layer - 2, layer - 1, layer], alpha=alpha, lr=lr,
        control_vecs=steering_vectors(d, coeff, 1, seed=0), mask_padding=mask_padding,
    )  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_only_down_proj_changes_and_retain_starts_at_zero(tiny, family):
    lm = fresh(tiny, family)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    trainer = make_trainer(lm, lr=1e-3)
    f, r = batches(lm, FORGET), batches(lm, RETAIN)
    first = trainer.step(f[0], r[0])
    assert first.retain == 0.0  # frozen and updated model are the same model at step 0
    assert first.forget > 0
    for i in range(1, 3):
        trainer.step(f[i], r[i])
    trainer.finish()
    changed = {n for n, p in lm.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {f"model.layers.{i}.mlp.down_proj.weight" for i in range(3)}
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert set(trainer.changed_weights()) == changed
    trainer.restore()
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())


@pytest.mark.parametrize("mask_padding", [False, True])
def test_steps_move_forget_activations_toward_control_vector(tiny, mask_padding):
    lm = fresh(tiny, "gemma2")
    trainer = make_trainer(lm, lr=3e-3, coeff=8.0, alpha=1.0, mask_padding=mask_padding)
    f, r = batches(lm, FORGET), batches(lm, RETAIN)
    cvec = trainer.control_vecs[0]

    def dist():
        acts = trainer.acts(f[0], grad=False)
        return rmu_mse(acts, cvec, f[0]["attention_mask"]).item()

    start = dist()
    for i in range(12):
        trainer.step(f[i % len(f)], r[i % len(r)])
    assert dist() < 0.7 * start


def test_frozen_acts_are_the_original_model(tiny):
    lm = fresh(tiny, "gemma3")
    original = copy.deepcopy(lm.model)
    trainer = make_trainer(lm, lr=1e-2)
    f, r = batches(lm, FORGET), batches(lm, RETAIN)
    for i in range(3):
        trainer.step(f[i], r[i])
    with torch.no_grad():
        want = original(**r[0], output_hidden_states=True).hidden_states[3]
        moved = lm.model(**r[0], output_hidden_states=True).hidden_states[3]
    assert not torch.allclose(moved, want)  # the model did change ...
    torch.testing.assert_close(trainer.frozen_acts(r[0]), want, rtol=0, atol=0)  # ... the frozen view did not


def test_nonfinite_loss_stops_before_any_update(tiny):
    lm = fresh(tiny, "gemma2")
    trainer = make_trainer(lm)
    with torch.no_grad():
        lm.model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    weights = trainer.changed_weights()
    f, r = batches(lm, FORGET), batches(lm, RETAIN)
    with pytest.raises(UnlearnError, match=r"RMU loss became nan at step 0 .*lower --lr or --steering-coeff"):
        trainer.step(f[0], r[0])
    for n, w in trainer.changed_weights().items():
        assert torch.equal(w.nan_to_num(), weights[n].nan_to_num())


# ---------------------------------------------------------------- equivalence with two full copies


def naive_rmu(model, layer, names, cvec, alpha, lr, mask_padding, pairs):
    """The reference algorithm as written upstream: a frozen and an updated full copy, full forwards
    (every layer and the output head), activations read from `hidden_states`, the loss written out."""
    updated, frozen = copy.deepcopy(model), copy.deepcopy(model)
    params = dict(updated.named_parameters())
    trained = [params[n].requires_grad_(True) for n in names]
    opt = torch.optim.AdamW(trained, lr=lr, eps=1e-6, weight_decay=0.0)

    def loss(h, target, mask):
        sq = (h.float() - target.float()) ** 2
        if not mask_padding:
            return sq.mean()
        m = mask.unsqueeze(-1).float()
        return (sq * m).sum() / m.sum()

    history = []
    for f_in, r_in in pairs:
        h_f = updated(**f_in, output_hidden_states=True).hidden_states[layer + 1]
        forget = loss(h_f, cvec.view(1, 1, -1).expand_as(h_f), f_in["attention_mask"])
        h_r = updated(**r_in, output_hidden_states=True).hidden_states[layer + 1]
        with torch.no_grad():
            h_0 = frozen(**r_in, output_hidden_states=True).hidden_states[layer + 1]
        retain = alpha * loss(h_r, h_0, r_in["attention_mask"])
        opt.zero_grad()
        (forget + retain).backward()
        opt.step()
        history.append((forget.item(), retain.item(), {n: params[n].detach().clone() for n in names}))
    return history


@pytest.mark.parametrize("family,mask_padding", [("gemma2", False), ("gemma2", True), ("gemma3", True)])
def test_lean_equals_two_full_copies(tiny, family, mask_padding):
    lm = fresh(tiny, family)
    f, r = batches(lm, FORGET), batches(lm, RETAIN)
    pairs = list(zip(f, r, strict=True))
    trainer = make_trainer(lm, lr=2e-3, coeff=10.0, alpha=50.0, mask_padding=mask_padding)
    names = list(trainer.params)
    reference = naive_rmu(lm.model, 2, names, trainer.control_vecs[0], 50.0, 2e-3, mask_padding, pairs)
    for (f_in, r_in), (forget, retain, weights) in zip(pairs, reference, strict=True):
        got = trainer.step(f_in, r_in)
        assert got.forget == pytest.approx(forget, rel=1e-6)
        assert got.retain == pytest.approx(retain, rel=1e-4, abs=1e-9)
        for n in names:
            torch.testing.assert_close(trainer.params[n].detach(), weights[n], rtol=1e-5, atol=1e-7)
    assert reference[-1][1] > 0  # the retain term was exercised, not trivially zero throughout


# ---------------------------------------------------------------- the command end to end (tiny model)


@pytest.fixture
def corpora(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    paths = {}
    for name, texts in (("forget", FORGET), ("retain", [""] + RETAIN)):  # "" is skipped (min_len)
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return paths


def tiny_cfg(tiny_folder, corpora, **kw):
    """The embedded preset's RMU settings on a tiny model (`--preset gemma-3-270m --model DIR`)."""
    base = dict(
        preset="gemma-3-270m", model=str(tiny_folder("gemma2")), layer=2, n_batches=4, batch_size=2, max_length=16,
        forget_source=[str(corpora["forget"])], retain_source=[str(corpora["retain"])],
        eval_limit=3, device="cpu", dtype="float32", run_id="t",
    )  # fmt: skip
    return RMUConfig(**{**base, **kw})


def test_a_borrowed_model_gives_the_same_run_and_gets_its_weights_back(tiny_folder, corpora, monkeypatch):
    """The demo lends its loaded model: the run equals one on a freshly loaded model, and the model is
    bit-identical afterwards, also when training fails."""
    from unlearn.setup import setup_of

    fresh = run_rmu(tiny_cfg(tiny_folder, corpora, lr=1e-3), progress=False)
    cfg = tiny_cfg(tiny_folder, corpora, lr=1e-3, run_id="lent")
    lm = load_model(setup_of(cfg))
    original = {n: p.clone() for n, p in lm.model.named_parameters()}
    lent = run_rmu(cfg, lm=lm, progress=False)
    for n, p in lm.model.named_parameters():
        assert torch.equal(p, original[n]) and not p.requires_grad, n
    a, b = load_file(str(fresh / "weights.safetensors")), load_file(str(lent / "weights.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[n], b[n]) for n in a)
    assert read_json(fresh / "metrics.json") == read_json(lent / "metrics.json")
    pd.testing.assert_frame_equal(pd.read_csv(fresh / "losses.csv"), pd.read_csv(lent / "losses.csv"))
    real_step, calls = RMUTrainer.step, []

    def failing_step(self, *args, **kwargs):  # fails after two real updates
        calls.append(real_step(self, *args, **kwargs))
        if len(calls) == 2:
            raise UnlearnError("boom")
        return calls[-1]

    monkeypatch.setattr(RMUTrainer, "step", failing_step)
    with pytest.raises(UnlearnError, match="boom"):
        run_rmu(tiny_cfg(tiny_folder, corpora, lr=1e-3, run_id="boom"), lm=lm, progress=False)
    assert len(calls) == 2
    for n, p in lm.model.named_parameters():
        assert torch.equal(p, original[n]), n


def test_resolve_config_from_preset_and_overrides():
    cfg = resolve_config(RMUConfig(preset="gemma-2-2b-it"))
    assert (cfg.layer, cfg.update_layers, cfg.steering_coeff, cfg.alpha) == (3, [1, 2, 3], 400.0, 100.0)
    assert (cfg.n_batches, cfg.batch_size, cfg.lr, cfg.mask_padding) == (300, 3, 5e-5, True)
    assert cfg.forget_source == ["wmdp-bio-forget"] and cfg.retain_source == ["wikitext"]
    cfg = resolve_config(RMUConfig(preset="gemma-2-2b-it", layer=7, alpha=300.0, mask_padding=False))
    assert (cfg.layer, cfg.update_layers, cfg.alpha, cfg.mask_padding) == (7, [5, 6, 7], 300.0, False)
    with pytest.raises(UnlearnError, match="one per --forget-source"):
        resolve_config(RMUConfig(forget_source=["a", "b", "c"], retain_source=["x", "y"]))


def test_run_writes_results_and_weights_load_back(tiny_folder, corpora):
    run = run_rmu(tiny_cfg(tiny_folder, corpora, lr=1e-3), progress=False)
    assert run == Path(os.environ["UNLEARN_RESULTS"]) / "rmu-baseline" / "t"
    cfg = read_json(run / "config.json")
    assert cfg["command"] == "rmu-baseline" and cfg["steps"] == 4 and cfg["update_layers"] == [0, 1, 2]
    losses = pd.read_csv(run / "losses.csv")
    assert list(losses.columns[:3]) == ["step", "forget_loss", "retain_loss"] and len(losses) == 4
    assert losses["retain_loss"][0] == 0.0
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    metrics = read_json(run / "metrics.json")
    before, after = EvalBlock.from_dict(metrics["before"]), EvalBlock.from_dict(metrics["after"])
    assert {s.role for s in before.scores} == {"forget", "retain"} and len(after.scores) == len(before.scores)
    assert not (run / "FAILED").exists()

    saved = load_file(str(run / "weights.safetensors"))
    assert sorted(saved) == [f"model.layers.{i}.mlp.down_proj.weight" for i in range(3)]
    lm = load_model(str(tiny_folder("gemma2")), device="cpu", dtype="float32")
    original = {n: p.clone() for n, p in lm.model.named_parameters()}
    assert load_rmu_weights(lm.model, run) == list(saved)
    for n, p in lm.model.named_parameters():
        assert torch.equal(p, saved[n]) if n in saved else torch.equal(p, original[n])
    assert all(not torch.equal(saved[n], original[n]) for n in saved)  # training moved every one

    bad = run.parent / "bad"
    bad.mkdir()
    save_file({n: w[:, :5].contiguous() for n, w in saved.items()}, str(bad / "weights.safetensors"))
    with pytest.raises(UnlearnError, match="do not fit this model"):
        load_rmu_weights(lm.model, bad)
    with pytest.raises(UnlearnError, match="No RMU weights"):
        load_rmu_weights(lm.model, run.parent / "missing")


def test_nan_run_saves_nothing_as_good(tiny_folder, corpora):
    with pytest.raises(UnlearnError, match="RMU loss became (inf|nan) at step 0"):
        run_rmu(tiny_cfg(tiny_folder, corpora, steering_coeff=1e25, eval=False), progress=False)
    run = Path(os.environ["UNLEARN_RESULTS"]) / "rmu-baseline" / "t"
    assert sorted(p.name for p in run.iterdir()) == ["FAILED", "config.json", "run.json"]
    assert "lower --lr" in (run / "FAILED").read_text()


def test_command_parses_options(tiny_folder, corpora):
    app = typer.Typer()
    app.command()(rmu_baseline_command)
    args = ["--preset", "gemma-3-270m", "--model", str(tiny_folder("gemma2")), "--layer", "2", "--update-layers", "1,2", "--n-batches", "2",
            "--batch-size", "2", "--forget-source", str(corpora["forget"]), "--forget-source",
            str(corpora["forget"]), "--retain-source", str(corpora["retain"]), "--mask-padding", "--no-eval",
            "--device", "cpu", "--dtype", "float32", "--run-id", "cli"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = read_json(Path(os.environ["UNLEARN_RESULTS"]) / "rmu-baseline" / "cli" / "config.json")
    assert cfg["update_layers"] == [1, 2] and cfg["mask_padding"] is True and len(cfg["forget_source"]) == 2
    losses = pd.read_csv(Path(os.environ["UNLEARN_RESULTS"]) / "rmu-baseline" / "cli" / "losses.csv")
    assert list(losses["source"]) == [str(corpora["forget"])] * 2


# ---------------------------------------------------------------- relative c and the convergence flag


def test_relative_coeff_is_rel_times_mean_residual_norm(tiny, tiny_folder, corpora):
    """c = rel × the mean per-token norm at layers[L] output, recomputed here from HF's hidden states
    (a second code path: the full forward with output_hidden_states) with a Python loop over tokens."""
    cfg = resolve_config(tiny_cfg(tiny_folder, corpora, steering_coeff_rel=0.7, max_length=40))
    assert cfg.steering_coeff is None and cfg.steering_coeff_rel == 0.7
    lm = tiny("gemma2")
    retain = [[RETAIN[i : i + 2] for i in range(0, 8, 2)]]
    out = absolute_coeff(lm, cfg, retain)
    total, count, bos, padded = 0.0, 0, lm.tokenizer.bos_token_id, False
    for texts in retain[0][:4]:
        enc = tokenize(lm.tokenizer, texts, cfg.max_length, lm.model.device)
        with torch.no_grad():
            hidden = lm.model(**enc, output_hidden_states=True).hidden_states[cfg.layer + 1].double()
        assert (enc["input_ids"][:, 0] == bos).all()
        padded |= bool((enc["attention_mask"] == 0).any())
        for b in range(hidden.shape[0]):
            for t in range(hidden.shape[1]):
                if enc["attention_mask"][b, t] and enc["input_ids"][b, t] != bos:
                    total += math.sqrt(sum(v * v for v in hidden[b, t].tolist()))
                    count += 1
    assert padded  # both BOS and padding were there to exclude
    assert out.resid_norm == pytest.approx(total / count, rel=1e-5)
    assert out.steering_coeff == pytest.approx(0.7 * total / count, rel=1e-5)
    with pytest.raises(UnlearnError, match="not both"):
        resolve_config(tiny_cfg(tiny_folder, corpora, steering_coeff=5.0, steering_coeff_rel=1.0))


def test_coeff_precedence_between_flags_and_preset():
    assert resolve_config(RMUConfig(preset="gemma-2-2b-it")).steering_coeff_rel is None  # absolute stays
    cfg = resolve_config(RMUConfig(preset="gemma-2-2b-it", steering_coeff_rel=2.0))
    assert (cfg.steering_coeff, cfg.steering_coeff_rel) == (None, 2.0)
    embedded = get_preset("gemma-3-270m").rmu
    cfg = resolve_config(RMUConfig(preset="gemma-3-270m"))
    assert (cfg.steering_coeff, cfg.steering_coeff_rel) == (
        embedded.get("steering_coeff") if "steering_coeff_rel" not in embedded else None,
        embedded.get("steering_coeff_rel"),
    )
    assert resolve_config(RMUConfig(preset="gemma-3-270m", steering_coeff=3.0)).steering_coeff_rel is None


@pytest.mark.parametrize(
    ("losses", "n_sources", "converged", "initial", "final"),
    [
        ([10.0] * 9 + [5.0], 1, True, 10.0, 5.0),  # exactly half over the last 10% (1 step)
        ([10.0] * 9 + [5.01], 1, False, 10.0, 5.01),
        ([10.0] + [1.0] * 18 + [9.2], 1, False, 10.0, 5.1),  # 20 steps: the last 2 are averaged
        ([10.0] + [1.0] * 17 + [4.0, 5.0], 1, True, 10.0, 4.5),
        ([8.0, 12.0] + [6.0] * 8, 2, False, 10.0, 6.0),  # two sources: initial is their first steps' mean
        ([4.0], 1, False, 4.0, 4.0),  # a single step cannot have converged
    ],
)
def test_convergence_flag(losses, n_sources, converged, initial, final):
    got = convergence(losses, target_scale=2.0, n_sources=n_sources)
    assert got["converged"] is converged
    assert got["forget_loss_initial"] == pytest.approx(initial) and got["forget_loss_final"] == pytest.approx(
        final
    )
    assert got["final_over_initial"] == pytest.approx(final / initial)
    assert got["final_over_target"] == pytest.approx(final / 2.0)
    with pytest.raises(UnlearnError, match="No RMU step"):
        convergence([], 1.0)


@pytest.mark.parametrize("mask_padding", [False, True])
def test_target_scale_is_the_loss_of_a_zero_activation(mask_padding):
    (cvec,) = steering_vectors(48, 7.5, 1, seed=3)
    zeros = torch.zeros(2, 5, 48)
    mask = torch.ones(2, 5, dtype=torch.long) if mask_padding else None
    assert forget_target_scale(7.5, 48, mask_padding) == pytest.approx(rmu_mse(zeros, cvec, mask).item())


def test_run_records_relative_coeff_and_convergence(tiny_folder, corpora):
    run = run_rmu(tiny_cfg(tiny_folder, corpora, lr=1e-3, steering_coeff_rel=0.5), progress=False)
    cfg, metrics = read_json(run / "config.json"), read_json(run / "metrics.json")
    assert cfg["steering_coeff_rel"] == 0.5 and cfg["steering_coeff"] == pytest.approx(
        0.5 * cfg["resid_norm"]
    )
    training = metrics["training"]
    assert training == read_json(run / "training.json") and isinstance(training["converged"], bool)
    assert training["steering_coeff"] == cfg["steering_coeff"] and training["steps"] == 4
    losses = pd.read_csv(run / "losses.csv")
    assert training["forget_loss_initial"] == pytest.approx(losses["forget_loss"][0])
    np.testing.assert_allclose(
        losses["forget_over_initial"], losses["forget_loss"] / losses["forget_loss"][0]
    )
    np.testing.assert_allclose(
        losses["forget_over_target"],
        losses["forget_loss"] / (cfg["steering_coeff"] ** 2 / (1 if cfg["mask_bos"] else 64)),  # ‖c·u‖²/D
        rtol=1e-6,
    )


@pytest.mark.parametrize("mask_padding", [False, True])
def test_mask_bos_leaves_bos_and_padding_out_of_both_losses(tiny, mask_padding):
    """Forget loss = Σ over real non-BOS tokens of ‖h − c·u‖² / their count, from HF's hidden states."""
    lm = fresh(tiny, "gemma2")
    bos = lm.tokenizer.bos_token_id
    trainer = make_trainer(lm, lr=1e-3, mask_padding=mask_padding)
    trainer.mask_bos_id = bos
    f, r = batches(lm, FORGET), batches(lm, RETAIN)
    forget, retain = trainer.losses(f[0], r[0])
    with torch.no_grad():
        h = lm.model(**f[0], output_hidden_states=True).hidden_states[3].double()
    keep = (f[0]["attention_mask"] == 1) & (f[0]["input_ids"] != bos)
    assert (f[0]["input_ids"] == bos).any() and (f[0]["attention_mask"] == 0).any()
    want = ((h - trainer.control_vecs[0].double()) ** 2).sum(-1)[keep].mean().item()
    assert forget.item() == pytest.approx(want, rel=1e-5)
    assert retain.item() == 0.0
