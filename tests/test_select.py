"""Feature statistics equal a float64 reference, the selection rule matches SAEBench's, and a planted
topic feature is selected first while a feature that fires everywhere is dropped."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unlearn.clamp.feature_stats import FeatureStats, accumulate, load_counters, save_counters, token_chunks
from unlearn.clamp.select import (
    SelectConfig,
    _parse_sources,
    log_odds_F,
    read_selection,
    run_select,
    select_features,
)
from unlearn.errors import UnlearnError
from unlearn.hooks import forward_to
from unlearn.results import read_json
from unlearn.sae.model import SAE

FORGET = [
    "The heart pumps blood. A cell of the heart has a nucleus, and the cell beats.",
    "Each cell holds DNA in the nucleus; the cell needs ATP from mitochondria.",
    "Which organ pumps blood through the body? The heart, made of many a cell.",
] * 4
RETAIN = [
    "History geography computer science and the study of human aging.",
    "The following are multiple choice questions about geography and history.",
    "A B C D Answer: the of and a to in is was that for on with as by at from this.",
] * 4


def _stats(freq, n=1000):
    return FeatureStats(
        n, torch.tensor(freq, dtype=torch.float64) * n, torch.tensor(freq, dtype=torch.float64)
    )


def test_selection_rule_matches_numpy_reference():
    rng = np.random.default_rng(0)
    forget = rng.integers(0, 60, 300) / 1000
    retain = rng.integers(0, 25, 300) / 1000
    f, r = _stats(forget), _stats(retain)
    for thr in (0.001, 0.01):
        # SAEBench get_top_features: zero the forget score of high-retain features, sort, drop zeros
        score = np.where(retain > thr, 0.0, forget)
        order = sorted(np.nonzero(score)[0], key=lambda i: (-score[i], i))
        assert select_features(f, r, retain_threshold=thr, n_features=20) == [int(i) for i in order[:20]]
        ratio = forget / np.maximum(retain, 1 / 1000)
        order = sorted(np.nonzero(score)[0], key=lambda i: (-ratio[i], -forget[i], i))
        got = select_features(f, r, retain_threshold=thr, n_features=20, rank_by="ratio")
        assert got == [int(i) for i in order[:20]]


def test_log_odds_rank_is_the_lower_bound_of_the_2x2_log_odds_ratio():
    """Reference: the textbook 2x2 table per feature, in plain Python floats."""
    rng = np.random.default_rng(1)
    n_f, n_r = 1000, 800
    forget = rng.integers(0, 40, 200) / n_f
    retain = rng.integers(0, 10, 200) / n_r
    f, r = _stats(forget, n_f), _stats(retain, n_r)
    got = log_odds_F(f, r, z=1.0).numpy()
    for i in range(200):
        a, c = forget[i] * n_f + 0.5, retain[i] * n_r + 0.5
        b, d = n_f - forget[i] * n_f + 0.5, n_r - retain[i] * n_r + 0.5
        want = math.log(a * d / (b * c)) - math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
        assert got[i] == pytest.approx(want, rel=1e-12, abs=1e-12)
    # 150 sightings against 20 outrank 8 against none, which `ratio` puts first (6.4 vs 6.0)
    fg, rt = _stats([8 / n_f, 150 / n_f], n_f), _stats([0.0, 20 / n_r], n_r)
    kw = {"n_features": 2, "retain_threshold": 0.05}
    assert select_features(fg, rt, rank_by="log-odds", **kw) == [1, 0]
    assert select_features(fg, rt, rank_by="ratio", **kw) == [0, 1]


def test_token_chunks_cover_the_text_with_bos_windows(tokenizer):
    chunks = list(token_chunks(FORGET[:3], tokenizer, max_length=8))
    bos = tokenizer.bos_token_id
    assert all(c[0] == bos and 2 <= len(c) <= 8 for c in chunks)
    bodies = [t for c in chunks for t in c[1:]]
    want = [t for text in FORGET[:3] for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert bodies == want
    capped = list(token_chunks(FORGET, tokenizer, max_length=8, max_tokens=30))
    assert sum(len(c) - 1 for c in capped) == 30


def random_sae(d_in=64, d_sae=32, hook="blocks.1.hook_resid_post", seed=0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d_in, d_sae, "jumprelu", hook_name=hook)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) / d_sae**0.5)
        sae.threshold.copy_(torch.rand(d_sae, generator=g) * 0.5)
    return sae.requires_grad_(False)


def test_stats_equal_float64_reference_without_bos_or_padding(tiny):
    lm = tiny("gemma3")
    tok, hook = lm.tokenizer, "blocks.1.hook_resid_post"
    sae = random_sae(hook=hook)
    chunks = list(token_chunks(FORGET + RETAIN, tok, max_length=12))
    assert len({len(c) for c in chunks}) > 1  # batches below hold padding
    stats = accumulate(lm.model, sae, hook, chunks, pad_id=tok.pad_token_id, bos_id=tok.bos_token_id,
                       batch_tokens=64)  # fmt: skip
    # reference: unpadded forwards, positions 1.. (BOS dropped), float64 numpy encode
    W_enc, b_enc = sae.W_enc.double().numpy(), sae.b_enc.double().numpy()
    thr = sae.threshold.double().numpy()
    fires, sums, n = np.zeros(32), np.zeros(32), 0
    for length in {len(c) for c in chunks}:  # equal-length chunks together: no padding at all
        same = torch.tensor([c for c in chunks if len(c) == length])
        x = forward_to(lm.model, [hook], input_ids=same)[hook][:, 1:].reshape(-1, 64).double().numpy()
        pre = x @ W_enc + b_enc
        f = np.where(pre > thr, np.maximum(pre, 0), 0.0)
        fires += (f > 0).sum(0)
        sums += f.sum(0)
        n += len(x)
    assert stats.n_tokens == n == sum(len(c) - 1 for c in chunks)
    assert np.abs(stats.fire_count_F.numpy() - fires).max() <= 1  # a float32 tie at the threshold at most
    np.testing.assert_allclose(stats.act_sum_F.numpy(), sums, rtol=1e-3, atol=1e-3)
    assert stats.freq_F.max() > 0


def planted_sae(lm, hook: str, token: str) -> tuple[SAE, int]:
    """Feature 9 is the direction of the token's embedding (fires only on it), feature 3 fires
    everywhere, feature 4 fires on BOS only; the rest are random."""
    tok_id = lm.tokenizer(token, add_special_tokens=False)["input_ids"]
    assert len(tok_id) == 1, f"{token!r} must be one token"
    ids = torch.tensor([[lm.tokenizer.bos_token_id, tok_id[0]]])
    x = forward_to(lm.model, [hook], input_ids=ids)[hook][0]  # embeddings (scaled) of BOS and the token
    sae = random_sae(hook=hook, seed=1)
    with torch.no_grad():
        for feat, v in ((9, x[1]), (4, x[0])):
            sae.W_enc[:, feat] = v / v.norm()
            sae.b_enc[feat] = -0.8 * v.norm()
            sae.threshold[feat] = 0.0
        sae.W_enc[:, 3] = 0.0
        sae.b_enc[3], sae.threshold[3] = 5.0, 0.0
    return sae, tok_id[0]


def test_planted_feature_is_selected_first(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    lm = tiny("gemma3")
    hook = "blocks.0.hook_resid_pre"  # the (scaled) token embedding: a feature can be one token exactly
    sae, tok_id = planted_sae(lm, hook, " cell")
    sae_dir = sae.save(tmp_path / "sae")
    (tmp_path / "forget.txt").write_text("\n\n".join(FORGET))
    (tmp_path / "retain.txt").write_text("\n\n".join(RETAIN))
    cfg = SelectConfig(
        sae=str(sae_dir), hook=hook, topics=["cardio", "cells"], retain_source=str(tmp_path / "retain.txt"),
        forget_sources={"cardio": str(tmp_path / "forget.txt"), "cells": str(tmp_path / "retain.txt")},
        n_features=5, max_length=16, batch_tokens=64, run_id="t1",
    )  # fmt: skip
    run_dir = run_select(cfg, lm=lm)
    features = read_json(run_dir / "features.json")
    cardio = features["topics"]["cardio"]
    assert cardio["features"][0] == 9
    assert (
        3 not in cardio["features"] and 4 not in cardio["features"]
    )  # everywhere: dropped; BOS: not counted
    top = cardio["stats"][0]
    assert top["retain_freq"] == 0.0 and top["forget_freq"] > 0
    assert top["top_tokens"] == [lm.tokenizer.decode([tok_id])]
    assert all("« cell»" in c["text"] for c in top["contexts"]) and len(top["contexts"]) == 8
    assert features["topics"]["cells"]["features"] == []  # retain text as forget text: nothing survives
    table = __import__("pandas").read_csv(run_dir / "stats.csv")
    assert len(table) == 32 and table.loc[3, "retain_freq"] == 1.0 and table.loc[4, "cardio_freq"] == 0.0
    assert table.loc[9, "cardio_rank"] == 1
    sel = read_selection(None, "cardio")  # the latest run
    assert sel.features == cardio["features"] and sel.hook == hook and sel.sae == str(sae_dir)
    assert read_json(run_dir / "config.json")["sources"]["retain"] == str(tmp_path / "retain.txt")
    # typical activations are the forget mean activations; controls are disjoint from the selection
    assert cardio["typical_activation"] == [s["mean_act"] for s in cardio["stats"]]
    ctrl = cardio["controls"]
    assert len(ctrl["controls"]) == len(cardio["features"]) and not set(ctrl["controls"]) & set(
        cardio["features"]
    )
    assert sel.typical == cardio["typical_activation"] and sel.controls == ctrl["controls"]
    assert cardio["auroc"] is None  # no preset and no held-out questions given


def test_match_controls_are_disjoint_nearest_in_frequency_and_seeded():
    from unlearn.clamp.feature_checks import match_controls

    rng = np.random.default_rng(2)
    freq = torch.tensor(rng.integers(0, 30, 200) / 1000, dtype=torch.float64)  # many exact ties
    selected = [int(i) for i in rng.choice(200, 25, replace=False)]
    got = match_controls(freq, selected, seed=7)
    assert len(got) == 25 == len(set(got)) and not set(got) & set(selected)
    used = set(selected)
    for i, j in zip(selected, got, strict=True):  # brute force: j is among the nearest still free
        best = min(abs(float(freq[c] - freq[i])) for c in range(200) if c not in used)
        assert abs(float(freq[j] - freq[i])) == best
        used.add(j)
    assert match_controls(freq, selected, seed=7) == got
    assert any(match_controls(freq, selected, seed=s) != got for s in range(8, 12))
    other = [int(i) for i in rng.choice([c for c in range(200) if c not in selected], 40, replace=False)]
    apart = match_controls(freq, selected, seed=7, exclude=other + got)  # another topic's features + controls
    assert len(apart) == 25 and not set(apart) & (set(selected) | set(other) | set(got))
    used = set(selected) | set(other) | set(got)
    for i, j in zip(selected, apart, strict=True):  # still the nearest free frequency
        assert abs(float(freq[j] - freq[i])) == min(
            abs(float(freq[c] - freq[i])) for c in range(200) if c not in used
        )
        used.add(j)


def test_control_typical_activation_falls_back_to_all_text():
    from unlearn.clamp.feature_checks import control_info

    forget = FeatureStats(10, torch.tensor([5.0, 0.0, 2.0, 0.0], dtype=torch.float64),
                          torch.tensor([10.0, 0.0, 1.0, 0.0], dtype=torch.float64))  # fmt: skip
    retain = FeatureStats(10, torch.tensor([0.0, 6.0, 1.0, 0.0], dtype=torch.float64),
                          torch.tensor([0.0, 3.0, 2.0, 0.0], dtype=torch.float64))  # fmt: skip
    info = control_info(forget, retain, [0], seed=0)
    assert info["typical_activation"] == [2.0]
    # feature 0 fires on 5/20 tokens; nearest free: feature 1 (6/20), which never fires on forget text
    assert info["controls"] == [1] and info["control_typical_activation"] == [0.5]
    assert info["control_freq"] == [0.3] and info["selected_freq"] == [0.25]


def test_sources_given_as_a_list_are_read_in_order(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    lm = tiny("gemma3")
    hook = "blocks.0.hook_resid_pre"
    sae, _ = planted_sae(lm, hook, " cell")
    (tmp_path / "a.txt").write_text("\n\n".join(FORGET[:3]))
    (tmp_path / "b.txt").write_text("\n\n".join(FORGET[3:6]))
    (tmp_path / "ab.txt").write_text("\n\n".join(FORGET[:6]))
    (tmp_path / "r.txt").write_text("\n\n".join(RETAIN))
    base = dict(hook=hook, max_length=16, batch_tokens=64, n_features=5)
    parts = run_select(SelectConfig(**base, forget_sources={"bio": [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]},
                                    retain_source=[str(tmp_path / "r.txt")], run_id="parts"), lm=lm, sae=sae)  # fmt: skip
    whole = run_select(SelectConfig(**base, forget_sources={"bio": str(tmp_path / "ab.txt")},
                                    retain_source=str(tmp_path / "r.txt"), run_id="whole"), lm=lm, sae=sae)  # fmt: skip
    a, b = (
        read_json(parts / "features.json")["topics"]["bio"],
        read_json(whole / "features.json")["topics"]["bio"],
    )
    assert a["tokens"] == b["tokens"] and a["features"] == b["features"] and a["stats"] == b["stats"]
    assert _parse_sources(["bio=x", "bio=y", "chem=z"]) == {"bio": ["x", "y"], "chem": "z"}


def test_detection_auroc_equals_a_brute_force_per_question_loop(tiny, tmp_path, monkeypatch):
    import json

    from unlearn.clamp.feature_checks import selection_auroc

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    lm = tiny("gemma3")
    hook = "blocks.0.hook_resid_pre"
    sae, _ = planted_sae(lm, hook, " cell")
    rows = {
        "f": ["What does the cell nucleus hold?", "Which organ pumps blood?", "The cell and the cell."],
        "r": ["Which is a history topic?", "A cell or a map?", "Where is geography taught?", "Of the and a?"],
    }
    for name, qs in rows.items():
        with open(tmp_path / f"{name}.jsonl", "w") as fh:
            for q in qs:
                fh.write(
                    json.dumps({"question": q, "choices": ["heart", "liver", "map", "DNA"], "answer": 1})
                    + "\n"
                )
    ids = [9, 2, 7]
    got = selection_auroc(lm, sae, hook, ids, [str(tmp_path / "f.jsonl")], [str(tmp_path / "r.jsonl")],
                          batch_tokens=64, top=(1, 2))  # fmt: skip
    # brute force: one question at a time, no padding, every pair compared
    from unlearn.data import iter_texts

    def score(text):
        ids_T = torch.tensor(
            [[lm.tokenizer.bos_token_id, *lm.tokenizer(text, add_special_tokens=False)["input_ids"]]]
        )
        x = forward_to(lm.model, [hook], input_ids=ids_T)[hook][0, 1:].double()
        return sae.double().encode(x)[:, ids].sum(0)

    pos = [score(t) for t in iter_texts(f"questions:{tmp_path / 'f.jsonl'}")]
    neg = [score(t) for t in iter_texts(f"questions:{tmp_path / 'r.jsonl'}")]

    def pairs(n):
        wins = [(float(p[:n].sum()) > float(q[:n].sum())) + 0.5 * (float(p[:n].sum()) == float(q[:n].sum()))
                for p in pos for q in neg]  # fmt: skip
        return sum(wins) / len(wins)

    assert got["auroc"] == pytest.approx(pairs(3), abs=1e-12)
    assert got["auroc_top"] == {
        "1": pytest.approx(pairs(1), abs=1e-12),
        "2": pytest.approx(pairs(2), abs=1e-12),
    }
    assert (
        got["n_forget"] == 3 and got["n_retain"] == 4 and got["auroc_top"]["1"] == 0.75
    )  # " cell" in 2 of 3 forget (one twice), 1 of 4 retain
    sae.float()
    cfg = SelectConfig(hook=hook, forget_sources={"bio": f"questions:{tmp_path / 'f.jsonl'}"}, n_features=3, max_length=16,
                       retain_source=f"questions:{tmp_path / 'r.jsonl'}", batch_tokens=64, run_id="auroc",
                       auroc_forget=[str(tmp_path / "f.jsonl")], auroc_retain=[str(tmp_path / "r.jsonl")])  # fmt: skip
    topic = read_json(run_select(cfg, lm=lm, sae=sae) / "features.json")["topics"]["bio"]
    assert topic["auroc"] == topic["detection"]["auroc"] is not None


def test_counters_from_an_earlier_run_rerank_without_counting_again(tiny, tmp_path, monkeypatch):
    import unlearn.clamp.select as sel_mod

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    lm = tiny("gemma3")
    hook = "blocks.1.hook_resid_post"
    sae_dir = random_sae(hook=hook).save(tmp_path / "sae")
    (tmp_path / "forget.txt").write_text("\n\n".join(FORGET))
    (tmp_path / "retain.txt").write_text("\n\n".join(RETAIN))
    base = dict(sae=str(sae_dir), hook=hook, retain_source=str(tmp_path / "retain.txt"),
                forget_sources={"bio": str(tmp_path / "forget.txt")}, n_features=10, max_length=16,
                batch_tokens=64, retain_threshold=0.5)  # fmt: skip
    first = run_select(SelectConfig(**base, rank_by="freq", run_id="freq"), lm=lm)
    fresh = run_select(SelectConfig(**base, rank_by="ratio", run_id="ratio"), lm=lm)

    def no_counting(*_, **__):
        raise AssertionError("counted again")

    monkeypatch.setattr(sel_mod, "accumulate", no_counting)
    reused = run_select(SelectConfig(**base, rank_by="ratio", run_id="re", counters_from="freq"), lm=lm)
    want, got = read_json(fresh / "features.json"), read_json(reused / "features.json")
    assert got["topics"]["bio"]["features"] == want["topics"]["bio"]["features"]
    assert got["topics"]["bio"]["stats"] == want["topics"]["bio"]["stats"]
    assert (
        want["topics"]["bio"]["features"] != read_json(first / "features.json")["topics"]["bio"]["features"]
    )
    with pytest.raises(UnlearnError, match="different max_tokens"):
        run_select(SelectConfig(**base, max_tokens=100, counters_from=str(first)), lm=lm)
    random_sae(hook=hook, seed=5).save(sae_dir)  # retrained in place: same path, other weights
    with pytest.raises(UnlearnError, match="different weights"):
        run_select(SelectConfig(**base, counters_from="freq"), lm=lm)
    with pytest.raises(UnlearnError, match="no counters.safetensors"):
        run_select(SelectConfig(**base, counters_from="nope"), lm=lm)


def test_user_errors(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    with pytest.raises(UnlearnError, match="TOPIC=SOURCE"):
        _parse_sources(["bio"])
    assert _parse_sources(["bio=offline:bio-forget"]) == {"bio": "offline:bio-forget"}
    with pytest.raises(UnlearnError, match="No feature selection found"):
        read_selection()
    lm = tiny("gemma3")
    sae = random_sae()
    with pytest.raises(UnlearnError, match="--forget-source"):
        run_select(SelectConfig(topics=["law"], hook="blocks.1.hook_resid_post"), lm=lm, sae=sae)
    src = {"forget_sources": {"bio": "offline:bio-forget"}, "retain_source": "offline:retain"}
    with pytest.raises(UnlearnError, match="d_in 48"):
        run_select(SelectConfig(hook="blocks.1.hook_resid_post", **src), lm=lm, sae=random_sae(d_in=48))
    with pytest.raises(UnlearnError, match="not found"):
        run_select(SelectConfig(sae="data/saes/nope", **src), lm=lm)
    with pytest.raises(UnlearnError, match="No SAE"):
        run_select(SelectConfig(**src), lm=lm)


def test_select_features_command(tiny, tiny_folder, tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from unlearn.clamp.select import select_features_command

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    hook = "blocks.0.hook_resid_pre"
    sae, _ = planted_sae(tiny("gemma3"), hook, " cell")
    (tmp_path / "f.txt").write_text("\n\n".join(FORGET))
    (tmp_path / "r.txt").write_text("\n\n".join(RETAIN))
    app = typer.Typer()
    app.command()(select_features_command)
    args = ["--model", str(tiny_folder("gemma3")), "--sae", str(sae.save(tmp_path / "sae")), "--hook", hook,
            "--topic", "bio", "--topic", "cyber", "--forget-source", f"bio={tmp_path / 'f.txt'}",
            "--forget-source", f"cyber={tmp_path / 'f.txt'}", "--retain-source", str(tmp_path / "r.txt"),
            "--n-features", "3", "--rank-by", "ratio", "--max-tokens", "200", "--run-id", "cli"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    features = read_json(tmp_path / "results" / "select-features" / "cli" / "features.json")
    assert features["topics"]["bio"]["features"][0] == 9 == features["topics"]["cyber"]["features"][0]
    assert features["rule"]["rank_by"] == "ratio" and features["rule"]["retain_tokens"] == 200
    assert "bio: " in result.output and "cyber: " in result.output
    bad = CliRunner().invoke(app, [*args[:-2], "--run-id", "x", "--rank-by", "magic"])
    assert isinstance(bad.exception, UnlearnError)


def test_resolve_sae_casts_a_float16_file_to_the_models_dtype(tiny, tmp_path):
    """A float16 SAE on a float32 CPU model would run every encode in slow, inexact float16."""
    import torch

    from unlearn.clamp.select import resolve_sae
    from unlearn.sae.model import SAE

    SAE(64, 32, hook_name="blocks.1.hook_resid_post", dtype=torch.float16).save(tmp_path / "sae16")
    lm = tiny("gemma2")
    sae, _, hook = resolve_sae(lm.setup, lm.model, str(tmp_path / "sae16"))
    assert sae.W_enc.dtype == torch.float32 == lm.model.dtype
    assert hook == "blocks.1.hook_resid_post"


def test_measure_features_for_explicit_ids_agrees_with_a_selection_run(tiny, tmp_path, monkeypatch):
    """`intervene --feature-ids` measures typical activations and controls on the preset's text; the
    numbers equal those a select-features run over the same text records."""
    from types import SimpleNamespace

    from unlearn.clamp.feature_checks import measure_features

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    lm = tiny("gemma3")
    hook = "blocks.0.hook_resid_pre"
    sae, _ = planted_sae(lm, hook, " cell")
    (tmp_path / "f.txt").write_text("\n\n".join(FORGET))
    (tmp_path / "r.txt").write_text("\n\n".join(RETAIN))
    run = run_select(SelectConfig(hook=hook, forget_sources={"bio": [str(tmp_path / "f.txt")]}, n_features=4,
                                  retain_source=str(tmp_path / "r.txt"), max_length=16, max_tokens=300,
                                  batch_tokens=64, run_id="m"), lm=lm, sae=sae)  # fmt: skip
    topic = read_json(run / "features.json")["topics"]["bio"]
    preset = SimpleNamespace(name="toy", select={"forget_text": {"bio": [str(tmp_path / "f.txt")]},
                                                 "retain_text": str(tmp_path / "r.txt")})  # fmt: skip
    info = measure_features(lm, sae, hook, preset, "bio", topic["features"], max_tokens=300, max_length=16,
                            batch_tokens=64)  # fmt: skip
    assert info["typical_activation"] == pytest.approx(topic["typical_activation"], rel=1e-9)
    assert info["controls"] == topic["controls"]["controls"]
    with pytest.raises(UnlearnError, match="no selection text for topic 'law'"):
        measure_features(lm, sae, hook, preset, "law", [1])


def test_saved_counters_are_byte_identical_whatever_the_order_and_load_back(tmp_path):
    """Counters saved in any name order give the same bytes (the distributed run compares files byte for
    byte; safetensors writes a metadata map in hash order), and load back exactly, token counts included."""
    gen = torch.Generator().manual_seed(0)
    stats = {name: FeatureStats(n, torch.rand(5, generator=gen, dtype=torch.float64),
                                torch.rand(5, generator=gen, dtype=torch.float64))
             for name, n in (("bio", 308), ("retain", 321), ("cyber", 17))}  # fmt: skip
    files = []
    for k in range(8):
        names = sorted(stats, reverse=bool(k % 2))
        save_counters(tmp_path / f"{k}.safetensors", {name: stats[name] for name in names})
        files.append((tmp_path / f"{k}.safetensors").read_bytes())
    assert len(set(files)) == 1
    back = load_counters(tmp_path / "0.safetensors")
    assert sorted(back) == sorted(stats)
    for name, s in stats.items():
        assert back[name].n_tokens == s.n_tokens
        assert torch.equal(back[name].fire_count_F, s.fire_count_F)
        assert torch.equal(back[name].act_sum_F, s.act_sum_F)
