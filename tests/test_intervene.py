"""The clamp hook: sparse form = dense SAE form, acts only where a chosen feature fires, never on BOS,
and is a no-op (bit-identical logits) with no features; the sweep writes, summarises and resumes."""

from __future__ import annotations

import contextlib
import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from unlearn.clamp.intervene import MODES, EditStats, clamped, feature_edit, new_values, random_rotation
from unlearn.errors import UnlearnError
from unlearn.hooks import capture, forward_to
from unlearn.sae.model import ARCHITECTURES, SAE

HOOK = "blocks.1.hook_resid_post"


def random_sae(
    d_in: int,
    d_sae: int,
    architecture: str,
    *,
    dtype=torch.float64,
    seed: int = 0,
    hook_name: str | None = HOOK,
    apply_b_dec_to_input: bool = False,
) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(
        d_in,
        d_sae,
        architecture,
        k=8 if architecture == "topk" else None,
        hook_name=hook_name,
        apply_b_dec_to_input=apply_b_dec_to_input,
        dtype=dtype,
    )
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) / d_sae**0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=g) * 0.1)
        if sae.threshold is not None:
            sae.threshold.copy_(torch.rand(d_sae, generator=g) * 0.3)
    return sae.requires_grad_(False)


def dense_reference(sae: SAE, x, features, mode, scale, protect=None):
    """`decode(f') + (x - decode(f))` with the full feature vector: the form the paper writes down."""
    f = sae.encode(x)
    f_new = f.clone()
    f_new[..., features] = new_values(f[..., features], mode, scale)
    if protect is not None:
        f_new[protect] = f[protect]
    return sae.decode(f_new) + (x - sae.decode(f))


def write_question_sets(tmp_path, rows: dict[str, list[dict]]) -> dict:
    """One question .jsonl per role (`{role: [rows]}`) under `tmp_path`; returns {role: path}."""
    paths = {}
    for role, rs in rows.items():
        paths[role] = tmp_path / f"{role}.jsonl"
        paths[role].write_text("".join(json.dumps(r) + "\n" for r in rs))
    return paths


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("apply_b_dec", [False, True])
def test_sparse_form_equals_dense_form(architecture, mode, apply_b_dec):
    sae = random_sae(16, 48, architecture, apply_b_dec_to_input=apply_b_dec)
    x = torch.randn(3, 7, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    features = [3, 17, 40, 5, 22, 11]
    f = sae.encode(x)[..., features]
    assert 0 < (f > 0).float().mean() < 1, "the test needs both active and inactive entries"
    protect = torch.zeros(3, 7, dtype=torch.bool)
    protect[:, 0] = True
    for scale in (-20.0, 3.0):
        got = clamped(sae, x, features, mode, scale)
        torch.testing.assert_close(
            got, dense_reference(sae, x, features, mode, scale), rtol=1e-12, atol=1e-12
        )
        got = clamped(sae, x, features, mode, scale, protect)
        want = dense_reference(sae, x, features, mode, scale, protect)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert torch.equal(got[:, 0], x[:, 0])


def test_new_values_touch_only_active_entries():
    f = torch.tensor([0.0, 1.5, 0.0, 2.0])
    assert new_values(f, "clamp", -20.0).tolist() == [0.0, -20.0, 0.0, -20.0]
    assert new_values(f, "zero", -20.0).tolist() == [0.0, 0.0, 0.0, 0.0]
    assert new_values(f, "scale", -2.0).tolist() == [0.0, -3.0, 0.0, -4.0]


def test_new_values_with_one_value_per_feature_match_a_loop():
    g = torch.Generator().manual_seed(3)
    f_NK = torch.randn(6, 4, generator=g, dtype=torch.float64).relu()
    values_K = torch.tensor([-3.0, -40.0, 7.0, -0.5], dtype=torch.float64)
    for mode in MODES:
        got = new_values(f_NK, mode, values_K)
        for n in range(6):
            for k in range(4):
                f, v = float(f_NK[n, k]), float(values_K[k])
                want = f if f <= 0 else {"clamp": v, "zero": 0.0, "scale": f * v}[mode]
                assert float(got[n, k]) == want


def test_random_rotation_is_orthogonal_and_seeded():
    q = random_rotation(24, seed=1)
    torch.testing.assert_close(q.T @ q, torch.eye(24, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(q, random_rotation(24, seed=1)) and not torch.equal(q, random_rotation(24, seed=2))


@pytest.mark.parametrize("mode", MODES)
def test_random_direction_edit_has_the_real_edit_norm(mode):
    """Same coefficients on rotated decoder rows: per-token ||Δx|| equal (float64), directions unrelated."""
    d_in, d_sae = 256, 64
    sae = random_sae(d_in, d_sae, "jumprelu")
    g = torch.Generator().manual_seed(4)
    x_ND = torch.randn(400, d_in, generator=g, dtype=torch.float64)
    idx = list(range(0, 40, 2))
    values = torch.linspace(-30, -1, len(idx), dtype=torch.float64)
    dirs_KD = sae.W_dec[idx] @ random_rotation(d_in, seed=0)
    torch.testing.assert_close(dirs_KD.norm(dim=-1), sae.W_dec[idx].norm(dim=-1), rtol=1e-12, atol=0)
    real_ND = clamped(sae, x_ND, idx, mode, values) - x_ND
    ctrl_ND = clamped(sae, x_ND, idx, mode, values, directions_KD=dirs_KD) - x_ND
    edited = real_ND.norm(dim=-1) > 0
    assert edited.sum() > 100
    # independent reference for the norm: sqrt(df G df^T) with the Gram matrix of the real rows
    df_NK = new_values(sae.encode(x_ND)[:, idx], mode, values) - sae.encode(x_ND)[:, idx]
    gram_KK = sae.W_dec[idx] @ sae.W_dec[idx].T
    want_N = torch.einsum("nk,kl,nl->n", df_NK, gram_KK, df_NK).clamp(min=0).sqrt()
    torch.testing.assert_close(ctrl_ND.norm(dim=-1), want_N, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(real_ND.norm(dim=-1), want_N, rtol=1e-10, atol=1e-10)
    assert torch.equal(ctrl_ND[~edited], torch.zeros_like(ctrl_ND[~edited]))
    cos_N = torch.nn.functional.cosine_similarity(real_ND[edited], ctrl_ND[edited], dim=-1)
    assert cos_N.abs().mean() < 0.15  # ~ sqrt(2/(pi d)) = 0.05 for unrelated directions in 256 dims


def test_edit_stats_match_a_loop():
    g = torch.Generator().manual_seed(6)
    x_ND = torch.randn(30, 8, generator=g, dtype=torch.float64)
    out_ND = x_ND.clone()
    out_ND[::3] += torch.randn(10, 8, generator=g, dtype=torch.float64)
    real_N = torch.ones(30, dtype=torch.bool)
    real_N[::5] = False
    stats = EditStats()
    stats.update(x_ND[:17], out_ND[:17], real_N[:17])
    stats.update(x_ND[17:], out_ND[17:], real_N[17:])
    rel = [float((out_ND[i] - x_ND[i]).norm() / x_ND[i].norm()) for i in range(30)
           if real_N[i] and not torch.equal(out_ND[i], x_ND[i])]  # fmt: skip
    got = stats.as_dict()
    assert got["tokens"] == 24 and got["edited_frac"] == len(rel) / 24
    assert got["rel_norm"] == pytest.approx(sum(rel) / len(rel), rel=1e-12)


def test_controls_change_nothing_where_no_feature_fires(tiny):
    """With the chosen features silent, the random-direction edit is exact zeros: logits bit-identical."""
    lm = tiny("gemma3")
    inputs = _inputs(lm)
    silent = random_sae(64, 32, "standard", dtype=torch.float32)
    silent.b_enc.fill_(-1e4)
    dirs_KD = silent.W_dec[[0, 1, 2]] @ random_rotation(64, dtype=torch.float32)
    stats = EditStats()
    with torch.no_grad():
        plain = lm.model(**inputs).logits
        with feature_edit(lm.model, silent, [0, 1, 2], "clamp", torch.tensor([-5.0, -9.0, -1.0]),
                   directions_KD=dirs_KD, stats=stats):  # fmt: skip
            hooked = lm.model(**inputs).logits
    assert torch.equal(plain, hooked)
    real = int(inputs["attention_mask"].sum() - (inputs["input_ids"] == lm.tokenizer.bos_token_id).sum())
    assert stats.as_dict() == {"tokens": real, "edited_frac": 0.0, "rel_norm": 0.0}


def _inputs(lm, texts=("The heart pumps blood through the body.", "Mitochondria make ATP for the cell.")):
    return lm.tokenizer(list(texts), return_tensors="pt", padding=True)


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_zero_features_leave_logits_bit_identical(tiny, family):
    lm = tiny(family)
    sae = random_sae(64, 32, "jumprelu", dtype=torch.float32)
    inputs = _inputs(lm)
    with torch.no_grad():
        plain = lm.model(**inputs).logits
        with feature_edit(lm.model, sae, [], "clamp", -50.0):
            hooked = lm.model(**inputs).logits
        # features that never fire: the edit adds exact zeros, so the logits are still bit-identical
        silent = random_sae(64, 32, "standard", dtype=torch.float32)
        silent.b_enc.fill_(-1e4)
        with feature_edit(lm.model, silent, [0, 1, 2], "clamp", -50.0):
            unfired = lm.model(**inputs).logits
    assert torch.equal(plain, hooked)
    assert torch.equal(plain, unfired)


def _fires_on_token(lm, hook: str, token_text: str) -> tuple[SAE, int]:
    """A standard SAE whose feature 5 is the direction of the hook activation at one token: it fires
    there (and wherever the residual points the same way), the other features are random."""
    tok_id = lm.tokenizer(token_text, add_special_tokens=False)["input_ids"][0]
    inputs = _inputs(lm)
    acts = forward_to(lm.model, [hook], **inputs)[hook]
    pos = (inputs["input_ids"] == tok_id).nonzero()[0]
    v = acts[pos[0], pos[1]]
    sae = random_sae(64, 32, "standard", dtype=torch.float32, hook_name=hook)
    with torch.no_grad():
        sae.W_enc[:, 5] = v / v.norm()
        sae.b_enc[5] = -0.9 * v.norm()  # fires only when the projection is ≥ 90 % of that token's
    return sae, tok_id


def test_clamp_edits_only_where_the_feature_fires(tiny):
    lm = tiny("gemma3")
    hook, nxt = "blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"
    sae, _ = _fires_on_token(lm, hook, " heart")
    inputs = _inputs(lm)
    with torch.no_grad():
        x = forward_to(lm.model, [hook], **inputs)[hook]
        fires = (sae.encode(x)[..., 5] > 0) & (
            inputs["input_ids"] != lm.tokenizer.bos_token_id
        )  # (batch, seq)
        assert 0 < fires.sum() < fires.numel()
        with feature_edit(lm.model, sae, [5], "clamp", -20.0), capture(lm.model, [nxt]) as seen:
            lm.model(**inputs)
    changed = (seen[nxt] != x).any(-1)
    assert torch.equal(changed, fires)
    # where it fired, the residual moved by (-20 - f) times the feature's decoder row
    d = sae.W_dec[5]
    moved = (seen[nxt] - x)[fires]
    want = (-20.0 - sae.encode(x)[..., 5][fires])[:, None] * d
    torch.testing.assert_close(moved, want, rtol=1e-4, atol=1e-4)


def test_bos_is_never_edited(tiny):
    lm = tiny("gemma3")
    hook, nxt = "blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"
    sae, _ = _fires_on_token(lm, hook, "<bos>")
    inputs = _inputs(lm)
    with torch.no_grad():
        x = forward_to(lm.model, [hook], **inputs)[hook]
        assert (sae.encode(x)[:, 0, 5] > 0).all()
        with feature_edit(lm.model, sae, [5], "clamp", -20.0), capture(lm.model, [nxt]) as kept:
            lm.model(**inputs)
        with (
            feature_edit(lm.model, sae, [5], "clamp", -20.0, skip_bos=False),
            capture(lm.model, [nxt]) as hit,
        ):
            lm.model(**inputs)
    assert torch.equal(kept[nxt][:, 0], x[:, 0])
    assert not torch.equal(hit[nxt][:, 0], x[:, 0])


def test_bos_is_kept_when_only_the_decoder_body_runs(tiny):
    """The scorers call `model.get_decoder()` directly (no output head); BOS must be protected there too."""
    lm = tiny("gemma3")
    hook = "blocks.1.hook_resid_post"
    sae, _ = _fires_on_token(lm, hook, "<bos>")
    inputs = _inputs(lm)
    with torch.no_grad():
        with feature_edit(lm.model, sae, [5], "clamp", -20.0):
            body = lm.model.get_decoder()(**inputs).last_hidden_state
        with feature_edit(lm.model, sae, [5], "clamp", -20.0):
            whole = lm.model(**inputs, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(body, whole, rtol=0, atol=0)


def test_clamp_user_errors(tiny):
    lm = tiny("gemma3")
    with pytest.raises(UnlearnError, match="d_in 48 != width 64"):
        with feature_edit(lm.model, random_sae(48, 32, "jumprelu"), [1]):
            pass
    with pytest.raises(UnlearnError, match="mode"):
        with feature_edit(lm.model, random_sae(64, 32, "jumprelu"), [1], mode="negate"):  # type: ignore[arg-type]
            pass
    with pytest.raises(UnlearnError, match="0..31"):
        with feature_edit(lm.model, random_sae(64, 32, "jumprelu"), [32]):
            pass
    # the hook is gone after an error inside the block
    inputs = _inputs(lm)
    with torch.no_grad():
        before = lm.model(**inputs).logits
        with pytest.raises(RuntimeError):
            with feature_edit(lm.model, random_sae(64, 32, "standard", dtype=torch.float32), list(range(32))):
                raise RuntimeError
        assert torch.equal(lm.model(**inputs).logits, before)


def _hook_counts(model) -> dict[str, int]:
    """Every forward hook, pre-hook (with or without kwargs) on every module, counted by kind."""
    counts = {"forward": 0, "pre": 0}
    for m in model.modules():
        counts["forward"] += len(m._forward_hooks)
        counts["pre"] += len(m._forward_pre_hooks)
    return counts


@pytest.mark.parametrize("fail", [False, True])
def test_clamp_removes_every_hook_it_installs_including_the_token_id_pre_hook(tiny, fail):
    lm = tiny("gemma3")
    sae = random_sae(64, 32, "standard", dtype=torch.float32)
    before = _hook_counts(lm.model)
    body = lm.model.get_decoder()
    with pytest.raises(RuntimeError) if fail else contextlib.nullcontext():
        with feature_edit(lm.model, sae, [1, 2], hook_name=HOOK):
            inside = _hook_counts(lm.model)
            assert len(body._forward_pre_hooks) >= 1  # the token-id pre-hook is on the decoder body
            if fail:
                raise RuntimeError
    assert (
        inside["pre"] > before["pre"]
        and inside["forward"] + inside["pre"] >= before["forward"] + before["pre"] + 2
    )
    assert _hook_counts(lm.model) == before  # both the edit hook and the pre-hook are gone


class FakeSuite:
    """Stands in for the evaluator: 'forget accuracy' = share of logits left bit-identical on fixed
    inputs (1.0 unhooked, lower when the hook edits anything), so the test sees whether the clamp was live."""

    def __init__(self, lm):
        self.lm, self.inputs, self.calls = lm, _inputs(lm), []
        with torch.no_grad():
            self.ref = lm.model(**self.inputs).logits

    def run(self, model, *, desc=None, on_task=None):
        from unlearn.eval.suite import EvalOutcome
        from unlearn.results import EvalBlock, TaskScore

        self.calls.append(desc)
        same = (model(**self.inputs).logits == self.ref).all(-1).float().mean().item()
        scores = [TaskScore("toy-forget", "forget", "cloze", "all", 10, same),
                  TaskScore("toy-retain", "retain", "cloze", "all", 10, 1.0)]  # fmt: skip
        return EvalOutcome(EvalBlock.from_scores(scores), pd.DataFrame({"q": [1]}))


def test_sweep_writes_points_and_resumes(tiny, tmp_path, monkeypatch):
    from unlearn.clamp.intervene import InterveneConfig, run_intervene, summary_frame
    from unlearn.results import read_json

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    lm = tiny("gemma3")
    sae, _ = _fires_on_token(lm, HOOK, " heart")
    suite = FakeSuite(lm)
    cfg = InterveneConfig(feature_ids=[5, 1, 2], modes=["clamp", "zero"], n_features=[1, 3],
                          scales=[-5.0, -20.0], run_id="r1", controls=[])  # fmt: skip
    run_dir = run_intervene(cfg, lm=lm, sae=sae, suite=suite)
    points = sorted(p.stem for p in (run_dir / "points").glob("*.json"))
    assert points == ["clamp_n1_s-20", "clamp_n1_s-5", "clamp_n3_s-20", "clamp_n3_s-5", "zero_n1", "zero_n3"]
    assert suite.calls[0] == "baseline" and len(suite.calls) == 7
    p = read_json(run_dir / "points" / "clamp_n3_s-20.json")
    assert p["features"] == [5, 1, 2] and p["scale"] == -20.0 and p["mode"] == "clamp"
    assert p["control"] is None and p["clamp_unit"] == "absolute" and p["clamp_values"] == [-20.0] * 3
    assert p["edit"]["tokens"] > 0 and 0 < p["edit"]["edited_frac"] < 1 and p["edit"]["rel_norm"] > 0
    summary = summary_frame(run_dir)
    assert list(summary["point"])[0] == "baseline" and len(summary) == 7
    clamp_rows = summary[summary["mode"] == "clamp"]
    assert (clamp_rows["d_forget"] < 0).all()  # the hook was live while the suite ran
    assert read_json(run_dir / "baseline.json")["forget_acc"] == 1.0

    # resume: nothing left to do; a lost point is redone alone; --resume finds the run by its settings
    with pytest.raises(UnlearnError, match="already exists.*--resume.*--overwrite"):
        run_intervene(cfg, lm=lm, sae=sae, suite=suite)  # re-using a run id needs --resume or --overwrite
    run_intervene(InterveneConfig(**{**cfg.__dict__, "resume": True}), lm=lm, sae=sae, suite=suite)
    assert len(suite.calls) == 7
    (run_dir / "points" / "zero_n3.json").unlink()
    again = InterveneConfig(**{**cfg.__dict__, "run_id": None, "resume": True})
    assert run_intervene(again, lm=lm, sae=sae, suite=suite) == run_dir
    assert suite.calls[7:] == ["zero_n3"]
    with pytest.raises(UnlearnError, match="ranked_features"):
        run_intervene(
            InterveneConfig(**{**cfg.__dict__, "feature_ids": [1], "resume": True}),
            lm=lm,
            sae=sae,
            suite=suite,
        )


def test_sweep_reads_a_selection_and_its_sae(tiny, tmp_path, monkeypatch):
    from unlearn.clamp.intervene import InterveneConfig, run_intervene
    from unlearn.results import mark_complete, read_json, write_json

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    lm = tiny("gemma3")
    sae, _ = _fires_on_token(lm, HOOK, " heart")
    sel = tmp_path / "select-features" / "s1"
    controls = {"controls": [3, 20, 21, 22], "control_typical_activation": [0.5, 2.0, 1.0, 1.0]}
    features = {"sae": str(sae.save(tmp_path / "sae")), "hook": HOOK, "rule": {"retain_threshold": 0.01, "rank_by": "ratio"},
                "topics": {"bio": {"features": [5, 7, 9, 11], "typical_activation": [4.0, 3.0, 2.0, 1.0],
                                   "controls": controls}}}  # fmt: skip
    write_json(sel / "features.json", features)
    write_json(sel / "config.json", {"command": "select-features"})
    mark_complete(sel)  # only completed selections are read
    suite = FakeSuite(lm)
    run_dir = run_intervene(
        InterveneConfig(n_features=[2], scales=[-20.0], clamp_unit="typical"), lm=lm, suite=suite
    )
    assert suite.calls == [
        "baseline",
        "clamp_n2_s-20",
        "clamp_n2_s-20_ctrl-features",
        "clamp_n2_s-20_ctrl-direction",
    ]
    p = read_json(run_dir / "points" / "clamp_n2_s-20.json")
    assert p["features"] == [5, 7] and p["retain_threshold"] == 0.01 and p["rank_by"] == "ratio"
    assert p["control"] is None and p["clamp_unit"] == "typical" and p["clamp_values"] == [-80.0, -60.0]
    ctrl = read_json(run_dir / "points" / "clamp_n2_s-20_ctrl-features.json")
    assert ctrl["control"] == "random-features" and ctrl["features"] == [3, 20]
    assert ctrl["clamp_values"] == [-10.0, -40.0] and ctrl["typical_activation"] == [0.5, 2.0]
    direc = read_json(run_dir / "points" / "clamp_n2_s-20_ctrl-direction.json")
    assert direc["control"] == "random-direction" and direc["features"] == [5, 7] and direc["seed"] == 0
    # same edit size as the real point, measured by the hook during the evaluation
    assert direc["edit"]["edited_frac"] == p["edit"]["edited_frac"] > 0
    assert direc["edit"]["rel_norm"] == pytest.approx(p["edit"]["rel_norm"], rel=1e-4)
    assert direc["metrics"]["forget_acc"] < 1.0
    cfg = read_json(run_dir / "config.json")
    assert cfg["features"] == str(sel / "features.json") and cfg["hook"] == HOOK and cfg["layer"] == 1
    assert p["metrics"]["forget_acc"] < 1.0
    with pytest.raises(UnlearnError, match="no topic 'chem'"):
        run_intervene(InterveneConfig(topic="chem"), lm=lm, suite=FakeSuite(lm))
    with pytest.raises(UnlearnError, match="clamp-unit must be"):
        run_intervene(InterveneConfig(clamp_unit="relative"), lm=lm, suite=FakeSuite(lm))
    with pytest.raises(UnlearnError, match="Unknown control"):
        run_intervene(InterveneConfig(controls=["shuffle"]), lm=lm, suite=FakeSuite(lm))
    del features["topics"]["bio"]["controls"], features["topics"]["bio"]["typical_activation"]
    write_json(sel / "features.json", features)  # an older selection: say what to do
    with pytest.raises(UnlearnError, match="--clamp-unit absolute --controls none"):
        run_intervene(InterveneConfig(clamp_unit="typical"), lm=lm, suite=FakeSuite(lm))
    with pytest.raises(UnlearnError, match="--clamp-unit absolute --controls none"):
        run_intervene(
            InterveneConfig(feature_ids=[1], clamp_unit="typical", controls=[]),
            lm=lm,
            sae=sae,
            suite=FakeSuite(lm),
        )


def intervene_cli(tiny_folder, tmp_path, *extra: str):
    """The `intervene` command as a typer app, and the arguments of a cloze sweep over all offline
    questions on the tiny Gemma 3 with a random SAE whose features fire everywhere (so a clamp certainly
    acts), followed by `extra`."""
    import typer

    from unlearn.clamp.intervene import intervene_command

    sae = random_sae(64, 32, "standard", dtype=torch.float32)
    sae.b_enc.fill_(0.5)
    app = typer.Typer()
    app.command()(intervene_command)
    args = ["--model", str(tiny_folder("gemma3")), "--sae", str(sae.save(tmp_path / "sae")), "--hook", HOOK,
            "--forget-tasks", "offline:bio", "--retain-tasks", "offline:retain", "--protocol", "cloze",
            "--all-questions", *extra]  # fmt: skip
    return app, args


def test_intervene_command_with_the_real_evaluator(tiny_folder, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from unlearn.results import read_json

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache"))
    app, args = intervene_cli(
        tiny_folder, tmp_path, "--feature-ids", "1,2,3,4", "--n-features", "2,4", "--mode", "clamp,zero",
        "--scale", "-50", "--limit", "4", "--controls", "random-direction", "--run-id", "cli",
    )  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "intervene" / "cli"
    assert sorted(p.stem for p in (run_dir / "points").glob("*.json")) == [
        "clamp_n2_s-50", "clamp_n2_s-50_ctrl-direction", "clamp_n4_s-50", "clamp_n4_s-50_ctrl-direction",
        "zero_n2", "zero_n4"]  # fmt: skip
    point = read_json(run_dir / "points" / "clamp_n4_s-50.json")
    tasks = {s["task"] for s in point["metrics"]["scores"]}
    assert "offline:bio" in tasks and any(t.startswith("offline:retain") for t in tasks)
    assert "intervene sweep" in result.output and "clamp_n4_s-50" in result.output
    # a resume reads the baseline back from questions/baseline.csv, whose `known` column is all NaN under
    # --all-questions; the lost point comes back the same
    lost = run_dir / "points" / "clamp_n4_s-50.json"
    lost.unlink()
    resumed = CliRunner().invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, (resumed.output, resumed.exception)
    assert read_json(lost)["metrics"]["scores"] == point["metrics"]["scores"]
    bad = CliRunner().invoke(app, [*args[:-2], "--run-id", "x", "--scale", "a,b"])
    assert isinstance(bad.exception, UnlearnError)


def test_intervene_command_scores_the_known_subset_by_default(monkeypatch):
    import typer
    from typer.testing import CliRunner

    import unlearn.clamp.intervene as iv

    seen = []

    def fake_run(cfg, **_):
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(iv, "run_intervene", fake_run)
    app = typer.Typer()
    app.command()(iv.intervene_command)
    CliRunner().invoke(app, ["--scale", "-20"])
    CliRunner().invoke(app, ["--scale", "-20", "--all-questions"])
    assert [c.known_only for c in seen] == [True, False]


def test_a_mistyped_preset_is_an_error_not_a_hub_lookup():
    from unlearn.clamp.intervene import InterveneConfig, run_intervene
    from unlearn.errors import UnlearnError

    with pytest.raises(UnlearnError, match="Unknown preset 'gemma-3-207m'"):
        run_intervene(InterveneConfig(preset="gemma-3-207m", feature_ids=[1]))


def test_resume_identifies_the_sae_by_its_weights_not_its_path(tiny, tmp_path, monkeypatch):
    from unlearn.clamp.intervene import InterveneConfig, run_intervene

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    lm = tiny("gemma3")
    sae, _ = _fires_on_token(lm, HOOK, " heart")
    cfg = InterveneConfig(feature_ids=[5], scales=[-20.0], sae="same/path", run_id="r", controls=[])
    run_intervene(cfg, lm=lm, sae=sae, suite=FakeSuite(lm))
    retrained = copy.deepcopy(sae)
    with torch.no_grad():
        retrained.W_dec.mul_(2)  # same path, other weights
    with pytest.raises(UnlearnError, match="sae_weights differ"):
        run_intervene(
            InterveneConfig(**{**cfg.__dict__, "resume": True}), lm=lm, sae=retrained, suite=FakeSuite(lm)
        )


def test_gated_point_is_calibrated_on_retain_and_leaves_unfired_questions_bit_identical(
    tiny, tmp_path, monkeypatch
):
    """A window gate calibrated at FPR 0 on the retain questions fires on none of them, so their
    log-likelihoods equal the unhooked model's exactly, while forget questions full of the feature's
    token are edited; the static clamp edits both (the feature fires on one retain token too)."""
    from unlearn.clamp.intervene import InterveneConfig, run_intervene
    from unlearn.results import read_json

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    lm = tiny("gemma3")
    sae, _ = _fires_on_token(lm, HOOK, " heart")
    with torch.no_grad():
        sae.b_enc[5] *= 0.5  # fire wherever the residual leans towards " heart" (any context)
    heart = " heart" * 6
    rows = {
        "forget": [{"question": f"Which organ {i} beats{heart}?", "choices": ["heart", "lung", "eye", "ear"],
                    "answer": i % 4} for i in range(6)],
        "retain": [{"question": f"Which city {i} is a capital{' heart' if i == 0 else ''}?",
                    "choices": ["Paris", "Lyon", "Nice", "Metz"], "answer": i % 4} for i in range(6)],
    }  # fmt: skip
    paths = write_question_sets(tmp_path, rows)
    cfg = InterveneConfig(
        feature_ids=[5], scales=[-50.0], clamp_unit="absolute", controls=[], gates=["none", "window"],
        gate_fpr=0.0, protocol="cloze", forget_tasks=[str(paths["forget"])],
        retain_tasks=[str(paths["retain"])], known_only=False, split="all",
        dilution=[0, 6], dilution_questions=4, dilution_text=f"questions:{paths['retain']}",
    )  # fmt: skip
    run_dir = run_intervene(cfg, lm=lm, sae=sae)
    gated = read_json(run_dir / "points" / "clamp_n1_s-50_gate-window.json")
    assert gated["gate"]["kind"] == "window" and gated["gate"]["measured_fpr"]["retain_all"] == 0.0
    # the rate counts every sequence forwarded: one packed row per question and one answer-prior row
    # (no question, never fires) each, so > 0.25 means most of the question rows fire
    assert gated["gate"]["measured_fpr"]["forget_all"] > 0.25
    ll = [f"ll_{k}" for k in range(4)]
    base = pd.read_csv(run_dir / "questions" / "baseline.csv")
    gate_q = pd.read_csv(run_dir / "questions" / "clamp_n1_s-50_gate-window.csv")
    static_q = pd.read_csv(run_dir / "questions" / "clamp_n1_s-50.csv")
    retain, forget = base.role == "retain", base.role == "forget"
    np.testing.assert_array_equal(gate_q.loc[retain, ll].to_numpy(), base.loc[retain, ll].to_numpy())
    assert not np.allclose(gate_q.loc[forget, ll].to_numpy(), base.loc[forget, ll].to_numpy())
    assert not np.allclose(static_q.loc[retain, ll].to_numpy(), base.loc[retain, ll].to_numpy())
    # the dilution check: the unhooked model and each real clamp point at every prefix length; at N = 0
    # the unhooked accuracy is the baseline's own on those questions, and a gated point records its firing
    dil = {p.stem: read_json(p) for p in (run_dir / "dilution").glob("*.json")}
    assert set(dil) == {"baseline", "clamp_n1_s-50", "clamp_n1_s-50_gate-window"}
    assert dil["baseline"]["prefix_tokens"] == [0, 6] and len(dil["baseline"]["acc"]) == 2
    first4 = base[forget].head(4)
    assert dil["baseline"]["acc"][0] == pytest.approx(first4.correct.mean())
    gated_dil = dil["clamp_n1_s-50_gate-window"]
    assert gated_dil["fired"][0] > 0.5  # the forget questions are full of the feature's token
    assert dil["clamp_n1_s-50"]["fired"] == [None, None] and all(0 <= f <= 1 for f in gated_dil["fired"])
    assert gated_dil["acc"][0] == pytest.approx(gate_q[forget].head(4).correct.mean())


def test_gate_calibrated_behind_filler_keeps_its_rate_on_prompts_that_long(tiny, tmp_path, monkeypatch):
    """`--gate-prefix N`: τ is set on the dev retain questions behind N filler tokens (here text full of
    the feature's token), so at FPR 0 the dilution check's benign control (retain questions behind that
    filler) never fires, where the gate calibrated on the bare questions fires on it."""
    from unlearn.clamp.dilution import prefixed_sets
    from unlearn.clamp.feature_checks import iter_sources
    from unlearn.clamp.gate_points import forwarded_stats
    from unlearn.clamp.gates import Gate
    from unlearn.clamp.intervene import InterveneConfig, run_intervene
    from unlearn.data import load_questions
    from unlearn.eval.suite import EvalConfig, prepare_eval
    from unlearn.results import read_json

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    lm = tiny("gemma3")
    sae, _ = _fires_on_token(lm, HOOK, " heart")
    with torch.no_grad():
        sae.b_enc[5] *= 0.5
    rows = {
        "forget": [{"question": f"Which organ {i} beats{' heart' * 6}?", "choices": ["heart", "lung", "eye", "ear"],
                    "answer": i % 4} for i in range(6)],
        "retain": [{"question": f"Which city {i} is a capital?", "choices": ["Paris", "Lyon", "Nice", "Metz"],
                    "answer": i % 4} for i in range(6)],
    }  # fmt: skip
    paths = write_question_sets(tmp_path, rows)
    filler = f"questions:{paths['forget']}"
    suite = prepare_eval(lm, EvalConfig(forget=[str(paths["forget"])], retain=[str(paths["retain"])],
                                        protocol="cloze", known_only=False, split="all"))  # fmt: skip
    gates = {}
    for prefix in (0, 8):
        cfg = InterveneConfig(
            feature_ids=[5], scales=[-50.0], clamp_unit="absolute", controls=[], gates=["window"],
            gate_fpr=0.0, gate_prefix=prefix, dilution=[0, 8], dilution_questions=4, dilution_text=filler,
            run_id=f"prefix{prefix}",
        )  # fmt: skip
        run_dir = run_intervene(cfg, lm=lm, sae=sae, suite=suite)
        gates[prefix] = Gate.from_json(
            read_json(run_dir / "points" / "clamp_n1_s-50_gate-window.json")["gate"]
        )
        gates[prefix, "benign"] = read_json(run_dir / "dilution" / "clamp_n1_s-50_gate-window.json")["benign"]
    assert gates[0].calibration_prefix == 0 and gates[8].calibration_prefix == 8
    dev = load_questions(str(paths["retain"]))
    ((_, behind),) = prefixed_sets(lm, dev, iter_sources(filler), [8]).items()
    stats = forwarded_stats(lm, sae, gates[8], suite, behind, hook_name=HOOK)
    assert gates[8].threshold == max(stats) > gates[0].threshold  # FPR 0: the largest, above the bare τ
    assert gates[0, "benign"]["fired"][1] > 0 and gates[8, "benign"]["fired"] == [0.0, 0.0]


@pytest.mark.parametrize("flags", [{"gate_prefix": 8, "gates": ["window"]}, {"dilution": [0, 8]}])
def test_missing_filler_text_is_an_error_before_the_known_subset_pass(tiny, tmp_path, monkeypatch, flags):
    """`--gate-prefix` or `--dilution` with no `--dilution-text` and no preset to take it from stops with
    the flag to pass, before any question is scored."""
    import unlearn.eval.suite
    from unlearn.clamp.intervene import InterveneConfig, run_intervene

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(unlearn.eval.suite, "prepare_eval", lambda *a, **k: pytest.fail("scored questions"))
    lm = tiny("gemma3")
    sae, _ = _fires_on_token(lm, HOOK, " heart")
    paths = write_question_sets(
        tmp_path, {"forget": [{"question": "Q?", "choices": ["a", "b"], "answer": 0}]}
    )
    cfg = InterveneConfig(feature_ids=[5], scales=[-50.0], clamp_unit="absolute", controls=[],
                          forget_tasks=[str(paths["forget"])], **flags)  # fmt: skip
    assert lm.preset is None
    with pytest.raises(UnlearnError, match="Filler text is needed: pass --dilution-text"):
        run_intervene(cfg, lm=lm, sae=sae)


@pytest.mark.parametrize("protocol", ["cloze", "letter"])
def test_reuse_scores_only_touched_questions_and_equals_a_full_evaluation(tiny, tmp_path, protocol):
    """`Reuse` (score the questions a hook touches, copy the rest from the unhooked frame) against the
    plain path (everything scored under the hook): the same predictions and log-likelihoods, for a static
    clamp, a gated clamp and a random-direction control; and the gate's firing log sees every question."""
    from unlearn.clamp.gates import FiringLog, Gate, gated
    from unlearn.clamp.intervene import feature_edit
    from unlearn.eval.suite import EvalConfig, Reuse, forwarded_sequences, prepare_eval, touched_questions

    lm = tiny("gemma3")
    rows = [{"question": f"Which organ {i} beats{' heart' * (i % 3)}?", "choices": ["liver", "lung", "eye", "ear"],
             "answer": i % 4} for i in range(9)]  # fmt: skip
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = prepare_eval(
        lm, EvalConfig(forget=[str(path)], protocol=protocol, mutual_info=False, batch_size=4)
    )
    # feature 5 fires where the residual is close to the " heart" token's of question 1 as it is forwarded
    (ids, _, _), *_ = forwarded_sequences(lm.model, lm.tokenizer, suite.tasks[0].questions[1:2], suite.cfg,
                                          chat_template=suite.chat_template)  # fmt: skip
    heart = lm.tokenizer(" heart", add_special_tokens=False)["input_ids"][0]
    v = forward_to(lm.model, [HOOK], input_ids=torch.tensor([ids]))[HOOK][0, ids.index(heart)]
    sae = random_sae(64, 32, "standard", dtype=torch.float32, hook_name=HOOK)
    with torch.no_grad():
        sae.W_enc[:, 5] = v / v.norm()
        sae.b_enc[5] = -0.9 * v.norm()
    with torch.inference_mode():
        base = suite.run(lm.model)
    rotation = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(0)))[0]
    gate = Gate("window", 0.0, features=(5,), value=-40.0, window=4)
    hooks = {
        "static": lambda log=None: feature_edit(lm.model, sae, [5], "clamp", -40.0, hook_name=HOOK),
        "direction": lambda log=None: feature_edit(lm.model, sae, [5], "clamp", -40.0, hook_name=HOOK,
                                            directions_KD=sae.W_dec[[5]] @ rotation),
        "gated": lambda log=None: gated(lm.model, sae, gate, hook_name=HOOK, record=log),
    }  # fmt: skip
    cols = ["pred", "correct"] + ([f"ll_{k}" for k in range(4)] if protocol == "cloze" else [])
    for name, hook in hooks.items():
        full_log, reuse_log = FiringLog(), FiringLog()
        with torch.inference_mode(), hook(full_log):
            full = suite.run(lm.model).questions
        with torch.inference_mode():
            reuse = Reuse(
                base.questions, lambda live, h=hook, log=reuse_log: h(log if live else FiringLog()), HOOK
            )
            got = suite.run(lm.model, reuse=reuse).questions
        np.testing.assert_array_equal(got["pred"], full["pred"], err_msg=name)
        for c in cols[2:]:
            np.testing.assert_allclose(got[c].astype(float), full[c].astype(float), rtol=1e-5, atol=1e-5)
        if name == "gated":
            assert sorted(reuse_log.all_stats()) == pytest.approx(sorted(full_log.all_stats()))
        touched = touched_questions(lm.model, lm.tokenizer, suite.tasks[0].questions, suite.cfg,
                                    chat_template=suite.chat_template, hook=reuse.hook(True),
                                    hook_name=reuse.hook_name)  # fmt: skip
        assert touched.any() and not touched.all(), (name, touched, "the hook must touch some questions only")
        if protocol == "cloze":  # the full path leaves exactly the untouched questions bit-identical
            ll = [f"ll_{k}" for k in range(4)]
            same = (full[ll].to_numpy() == base.questions[ll].to_numpy()).all(1)
            np.testing.assert_array_equal(same, ~touched)


def test_bad_window_span_is_a_clear_error_before_any_work():
    from unlearn.clamp.intervene import InterveneConfig, check_intervene_flags

    with pytest.raises(UnlearnError, match="--window-span must be windows or sequence"):
        check_intervene_flags(InterveneConfig(gates=["window"], window_span="everywhere"))
