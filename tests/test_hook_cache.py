"""The hook-layer cache: a hit gives the full forward's logits bit for bit (plain and packed cloze batches,
under a clamp, a gate, and hooks at every hook kind); sweeps and screening give the same results with and
without it; anything that would make the skipped layers differ bypasses or invalidates; nothing is left
installed after the block."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_intervene import HOOK, _fires_on_token, _inputs, random_sae, write_question_sets

from unlearn.clamp.gates import FiringLog, Gate, gated
from unlearn.clamp.intervene import feature_edit
from unlearn.eval.hook_cache import LayerStore, active_cache, cached_layer, hook_layer_cache
from unlearn.eval.scoring import cloze_rows, make_letter_scorer, score_cloze, score_letter
from unlearn.hooks import decoder_layers, edit, forward_to, live_hooks
from unlearn.results import read_json

FAMILIES = ["gemma", "gemma2", "gemma3"]


def _questions(n: int = 7):
    from conftest import Q

    return [Q(f"Which organ {i} pumps{' heart' * (i % 3)} blood?", ["heart", "the liver", "lung", "an eye"], i % 4)
            for i in range(n)]  # fmt: skip


def _installed(model) -> list[str]:
    """Modules with a swapped forward (an instance attribute), and live hooks."""
    swapped = [name for name, m in model.named_modules() if "forward" in m.__dict__]
    return swapped + live_hooks(model)


def test_cached_layer_is_the_last_layer_the_hook_cannot_change():
    assert cached_layer("blocks.3.hook_resid_post") == 3
    assert cached_layer("blocks.3.hook_resid_pre") == 2
    assert cached_layer("blocks.3.attn.hook_z") == 2
    assert cached_layer("blocks.3.hook_mlp_out") == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_a_hit_gives_the_full_forwards_logits_bit_for_bit(tiny, family):
    """Plain padded batch through the whole model and packed 4D-mask cloze batches through the scorer,
    under a static clamp and under a gate: the reference is the same call without the cache."""
    lm = tiny(family)
    model, tok = lm.model, lm.tokenizer
    sae, _ = _fires_on_token(lm, HOOK, " heart")
    gate = Gate("window", 0.0, features=(5,), value=-40.0, window=4)
    inputs = _inputs(lm)
    assert inputs["attention_mask"].min() == 0, "the plain batch must hold padding"
    qs = _questions()
    for name, hook in {"clamp": lambda: feature_edit(model, sae, [5], "clamp", -40.0, hook_name=HOOK),
                       "gate": lambda: gated(model, sae, gate, hook_name=HOOK, record=FiringLog())}.items():  # fmt: skip
        with torch.inference_mode(), hook():
            ref_logits = model(**inputs, use_cache=False).logits
            ref_ll = score_cloze(qs, model, tok, batch_size=3)["ll"]
        assert not torch.equal(ref_logits, model(**inputs, use_cache=False).logits.detach()), (
            "the hook must act"
        )
        with torch.inference_mode(), hook_layer_cache(model, HOOK) as cache, hook():
            for _ in range(2):  # a miss, then a hit
                assert torch.equal(model(**inputs, use_cache=False).logits, ref_logits), (family, name)
                np.testing.assert_array_equal(score_cloze(qs, model, tok, batch_size=3)["ll"], ref_ll)
        rows = cloze_rows(qs, tok, model)  # packed rows, and one row per choice past the sliding window
        n_packed = sum(r[1] is not None for r in rows)
        assert n_packed > 0, "some batches must be packed (4D mask + position ids)"
        n_batches = 1 + -(-n_packed // 3) + -(-(len(rows) - n_packed) // 3)
        assert (cache.stats.misses, cache.stats.hits) == (n_batches, n_batches), cache.stats
        assert cache.stats.bypasses == {} and _installed(model) == []


@pytest.mark.parametrize(
    "hook_name", ["blocks.2.hook_resid_pre", "blocks.2.hook_mlp_out", "blocks.2.attn.hook_z"]
)
def test_hooks_inside_the_layer_after_the_cached_one_still_act(tiny, hook_name):
    """Every hook kind but resid_post caches the layer before it; an edit at the hook (here: doubling
    the activation) still gives the full forward's logits exactly, for the letter scorer too."""
    lm = tiny("gemma3")
    model, inputs = lm.model, _inputs(lm)
    scorer = lambda: make_letter_scorer(model, lm.tokenizer, batch_size=4)  # noqa: E731
    with torch.inference_mode(), edit(model, hook_name, lambda a: a * 2):
        ref = model(**inputs, use_cache=False).logits
        ref_letter = score_letter(_questions(), lm.tokenizer, scorer(), chat_template=False)["scores"]
        with hook_layer_cache(model, hook_name) as cache:
            for _ in range(2):
                assert torch.equal(model(**inputs, use_cache=False).logits, ref)
                got = score_letter(_questions(), lm.tokenizer, scorer(), chat_template=False)["scores"]
                np.testing.assert_array_equal(got, ref_letter)
    assert cache.k == 1 and cache.stats.hits == cache.stats.misses > 0


def test_forward_to_and_the_scorer_share_entries_and_the_unhooked_baseline_costs_no_forward(tiny, tmp_path):
    """The touched-question pass (`forward_to`, through the full model) stores what the scorer (the decoder
    body) then hits; inside the cache the suite still sees the model as unhooked and reads the baseline
    from the known-subset pass."""
    from unlearn.eval.suite import EvalConfig, forward_batches, forwarded_sequences, prepare_eval

    lm = tiny("gemma3")
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"question": q.question, "choices": q.choices, "answer": q.answer}) + "\n"
                            for q in _questions()))  # fmt: skip
    suite = prepare_eval(lm, EvalConfig(forget=[str(path)], protocol="cloze", known_only=True, mutual_info=False,
                                        batch_size=3))  # fmt: skip
    with torch.inference_mode(), hook_layer_cache(lm.model, HOOK) as cache:
        base = suite.run(lm.model)
        assert (cache.stats.hits, cache.stats.misses) == (0, 0)
        seqs = forwarded_sequences(
            lm.model, lm.tokenizer, suite.tasks[0].questions, suite.cfg, chat_template=False
        )
        batches = list(forward_batches(lm.model, lm.tokenizer, seqs, 3))
        for inputs, _, _ in batches:
            forward_to(lm.model, [HOOK], **inputs)
        misses = cache.stats.misses
        got = score_cloze(suite.tasks[0].questions, lm.model, lm.tokenizer, batch_size=3)["ll"]
    assert misses == len(batches) > 1 and cache.stats.hits == len(batches) and cache.stats.misses == misses
    np.testing.assert_array_equal(got, base.questions[[f"ll_{k}" for k in range(4)]].to_numpy())


def test_what_would_change_the_skipped_layers_bypasses_or_invalidates(tiny):
    """A hook on an early layer, grad mode and `use_cache` bypass; a changed prefix weight drops the
    entries; a full memory cap only stops storing. Each answer equals the plain forward's."""
    lm = tiny("gemma2")
    model, inputs = lm.model, _inputs(lm)
    layers = decoder_layers(model)

    def plain(**kw):
        return model(**inputs, use_cache=False, **kw).logits.detach()

    with torch.inference_mode():
        ref = plain()
        with edit(model, "blocks.0.hook_resid_post", lambda a: a * 1.5):
            early_ref = plain()
    with hook_layer_cache(model, HOOK) as cache:
        with torch.inference_mode():
            plain(), plain()
            assert cache.stats.hits == 1
            with edit(model, "blocks.0.hook_resid_post", lambda a: a * 1.5):  # an early layer's hook
                assert torch.equal(plain(), early_ref) and not torch.equal(early_ref, ref)
            assert cache.stats.bypasses["hook before the hook layer"] == 1
            handle = layers[1].register_forward_pre_hook(lambda m, a: None)  # pre-hook of the cached layer
            plain()
            handle.remove()
            assert cache.stats.bypasses["hook before the hook layer"] == 2
            out = model(**inputs).logits  # config.use_cache: a KV cache the skipped layers would not fill
            assert torch.equal(out, ref) and cache.stats.bypasses["use_cache"] == 1
        out = model(
            **inputs, use_cache=False
        ).logits  # grad mode: a plain forward (the prefix gets gradients)
        assert torch.equal(out.detach(), ref) and cache.stats.bypasses["grad enabled"] == 1
        w = layers[0].mlp.down_proj.weight
        saved = w.detach().clone()
        try:
            with torch.no_grad():
                w.mul_(1.01)  # in place: a new version of a prefix weight
            with torch.inference_mode():
                changed = plain()
            assert cache.stats.invalidations == 1 and cache.stats.hits == 1
        finally:
            with torch.no_grad():
                w.copy_(saved)
    with torch.no_grad():
        w.mul_(1.01)
    try:
        with torch.inference_mode():
            assert torch.equal(changed, plain()) and not torch.equal(changed, ref)
    finally:
        with torch.no_grad():
            w.copy_(saved)
    assert _installed(model) == []
    with torch.inference_mode(), hook_layer_cache(model, HOOK, max_bytes=0) as full:
        assert torch.equal(plain(), ref) and torch.equal(plain(), ref)
    assert full.stats.over_cap == 2 and full.stats.hits == 0 and full.stats.entries == 0


@pytest.mark.parametrize("fail", [False, True])
def test_forwards_are_restored_after_the_block_even_after_an_error(tiny, fail):
    lm = tiny("gemma")
    model, inputs = lm.model, _inputs(lm)
    body = model.get_decoder()
    before = (type(body).forward, [type(m).forward for m in decoder_layers(model)])
    with torch.inference_mode():
        ref = model(**inputs, use_cache=False).logits
        try:
            with hook_layer_cache(model, "blocks.2.hook_resid_post") as cache:
                assert active_cache(model) is cache and "forward" in body.__dict__
                model(**inputs, use_cache=False)
                if fail:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            pass
        assert _installed(model) == [] and active_cache(model) is None
        assert torch.equal(model(**inputs, use_cache=False).logits, ref)
    assert before == (type(body).forward, [type(m).forward for m in decoder_layers(model)])


def test_a_cache_inside_another_stays_idle_and_exact(tiny):
    """The outer cache's hits skip layers an inner one would store: the inner one stays idle."""
    lm = tiny("gemma3")
    model, inputs = lm.model, _inputs(lm)
    with torch.inference_mode():
        ref = model(**inputs, use_cache=False).logits
        with hook_layer_cache(model, "blocks.2.hook_resid_post") as outer:
            model(**inputs, use_cache=False)
            with hook_layer_cache(model, HOOK) as inner:
                for _ in range(2):
                    assert torch.equal(model(**inputs, use_cache=False).logits, ref)
            assert active_cache(model) is outer
            assert torch.equal(model(**inputs, use_cache=False).logits, ref)
        assert _installed(model) == [] and active_cache(model) is None
    assert inner.stats.hits == inner.stats.misses == 0 and (outer.stats.hits, outer.stats.misses) == (3, 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_later_run_reads_the_stored_prefix_and_gets_the_full_forwards_logits(tiny, family, tmp_path):
    """A second cache (a new run: nothing in memory) on the same store hits every batch from disk: plain
    and packed cloze batches under a clamp give the uncached logits bit for bit, nothing recomputed."""
    lm = tiny(family)
    model, tok = lm.model, lm.tokenizer
    sae, _ = _fires_on_token(lm, HOOK, " heart")
    inputs, qs = _inputs(lm), _questions()
    store = LayerStore(tmp_path / "store")
    with torch.inference_mode(), feature_edit(model, sae, [5], "clamp", -40.0, hook_name=HOOK):
        ref_logits = model(**inputs, use_cache=False).logits
        ref_ll = score_cloze(qs, model, tok, batch_size=3)["ll"]
        runs = []
        for _ in range(2):
            with hook_layer_cache(model, HOOK, store=store) as cache:
                assert torch.equal(model(**inputs, use_cache=False).logits, ref_logits)
                np.testing.assert_array_equal(score_cloze(qs, model, tok, batch_size=3)["ll"], ref_ll)
            runs.append(cache.stats)
    first, second = runs
    assert first.misses == first.disk_writes > 1 and first.disk_hits == 0
    assert second.misses == 0 and second.disk_writes == 0 and second.hits == second.disk_hits == first.misses
    assert len(list((tmp_path / "store").rglob("*.pt"))) == first.misses and _installed(model) == []


def test_the_store_misses_on_changed_weights_inputs_or_a_broken_file_and_keeps_to_its_cap(tiny, tmp_path):
    """A prefix weight changed since the entry was written names another entry (a miss, the changed
    model's own logits); other token ids miss; an unreadable file is recomputed and rewritten; past
    `max_bytes` the least recently used files go first."""
    lm = tiny("gemma2")
    model, inputs = lm.model, _inputs(lm)
    other = _inputs(lm, ("A cell divides by mitosis.", "Enzymes speed up reactions."))
    store = LayerStore(tmp_path / "store")

    def run(batch, store=store):
        with torch.inference_mode(), hook_layer_cache(model, HOOK, store=store) as cache:
            logits = model(**batch, use_cache=False).logits
        return logits, cache.stats

    ref, stats = run(inputs)
    assert (stats.misses, stats.disk_writes) == (1, 1)
    _, stats = run(other)
    assert (stats.misses, stats.disk_hits) == (1, 0)
    w = decoder_layers(model)[0].mlp.down_proj.weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w[0, 0] += 1e-3  # one value of one prefix weight
        changed, stats = run(inputs)
        with torch.inference_mode():
            fresh = model(**inputs, use_cache=False).logits
        assert torch.equal(changed, fresh) and not torch.equal(changed, ref)
        assert (stats.misses, stats.disk_hits) == (1, 0)
    finally:
        with torch.no_grad():
            w.copy_(saved)
    got, stats = run(inputs)
    assert torch.equal(got, ref) and stats.disk_hits == 1  # the original weights' entry is still there
    files = sorted((tmp_path / "store").rglob("*.pt"), key=lambda f: f.stat().st_mtime)
    files[-1].write_bytes(b"not a tensor")  # the entry just read
    got, stats = run(inputs)
    assert torch.equal(got, ref) and (stats.disk_hits, stats.misses, stats.disk_writes) == (0, 1, 1)
    assert run(inputs)[1].disk_hits == 1
    one = max(f.stat().st_size for f in files)
    small = LayerStore(tmp_path / "small", max_bytes=int(one * 1.5))
    run(inputs, small)
    oldest = next((tmp_path / "small").rglob("*.pt"))
    run(other, small)  # no room for two: the older file goes
    left = list((tmp_path / "small").rglob("*.pt"))
    assert len(left) == 1 and left[0] != oldest


def test_offloaded_prefix_weights_keep_the_store_out_and_the_cache_exact(tiny, tmp_path):
    """A `meta` tensor in the skipped part (accelerate's offload keeps its bytes elsewhere): nothing to
    name the entry by, so nothing is written or read; the in-memory cache still hits, exactly."""
    lm = tiny("gemma3")
    model, inputs = lm.model, _inputs(lm)
    layer = decoder_layers(model)[0]
    with torch.inference_mode():
        ref = model(**inputs, use_cache=False).logits
    layer.register_buffer("offloaded", torch.empty(2, device="meta"))
    try:
        with torch.inference_mode(), hook_layer_cache(model, HOOK, store=LayerStore(tmp_path)) as cache:
            assert cache.identity() is None
            for _ in range(2):
                assert torch.equal(model(**inputs, use_cache=False).logits, ref)
    finally:
        del layer._buffers["offloaded"]
    assert (cache.stats.misses, cache.stats.hits, cache.stats.disk_writes) == (1, 1, 0)
    assert not list(tmp_path.rglob("*.pt")) and cache.identity() is not None


def _question_files(tmp_path):
    heart = " heart" * 6
    rows = {
        "forget": [{"question": f"Which organ {i} beats{heart if i % 3 else ''}?",
                    "choices": ["heart", "lung", "eye", "ear"], "answer": i % 4} for i in range(9)],
        "retain": [{"question": f"Which city {i} is a capital{' heart' if i == 0 else ''}?",
                    "choices": ["Paris", "Lyon", "Nice", "Metz"], "answer": i % 4} for i in range(8)],
    }  # fmt: skip
    return write_question_sets(tmp_path, rows)


def test_a_sweep_gives_the_same_points_with_and_without_the_cache(tiny, tmp_path, monkeypatch):
    """Static, gated and control points and the dilution check: identical point metrics with and
    without the cache, the same predictions and log-likelihoods; the cache was used (hits). A point whose
    hook touches most questions is scored whole on the cached prefix: bit-identical to a full evaluation."""
    from unlearn.clamp.intervene import InterveneConfig, run_intervene

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    lm = tiny("gemma3")
    sae, _ = _fires_on_token(lm, HOOK, " heart")
    with torch.no_grad():
        sae.b_enc[5] *= 0.5
    paths = _question_files(tmp_path)
    common = dict(feature_ids=[5], scales=[-50.0], clamp_unit="absolute", controls=["random-direction"],
                  gates=["none", "window"], gate_fpr=0.0, protocol="cloze", forget_tasks=[str(paths["forget"])],
                  retain_tasks=[str(paths["retain"])], known_only=False, split="all", batch_size=4,
                  dilution=[0, 6], dilution_questions=4, dilution_text=f"questions:{paths['retain']}")  # fmt: skip
    import unlearn.eval.suite as suite_module

    choices = []  # (touched share, scored whole?) of every task of every point
    real = suite_module.score_all_instead
    monkeypatch.setattr(suite_module, "score_all_instead",
                        lambda m, frac: choices.append((frac, real(m, frac))) or choices[-1][1])  # fmt: skip
    runs = {on: run_intervene(InterveneConfig(**common, hook_cache=on, run_id=f"c{on}"), lm=lm, sae=sae)
            for on in (False, True)}  # fmt: skip
    assert any(whole and frac < 1 for frac, whole in choices), choices  # whole batches, not the subset
    assert any(not whole for frac, whole in choices), choices  # e.g. the gated point's few questions
    points = sorted(p.name for p in (runs[True] / "points").glob("*.json"))
    assert len(points) == 4 and points == sorted(p.name for p in (runs[False] / "points").glob("*.json"))
    for name in points:
        on, off = (read_json(runs[x] / "points" / name) for x in (True, False))
        assert on["metrics"] == off["metrics"], name
        assert on["gate"] == off["gate"], name
        q_on, q_off = (
            pd.read_csv(runs[x] / "questions" / name.replace(".json", ".csv")) for x in (True, False)
        )
        np.testing.assert_array_equal(q_on["pred"], q_off["pred"])
        ll = [f"ll_{k}" for k in range(4)]
        np.testing.assert_allclose(q_on[ll].to_numpy(), q_off[ll].to_numpy(), rtol=1e-5, atol=1e-5)
    for name in ("baseline.json", "clamp_n1_s-50.json", "clamp_n1_s-50_gate-window.json"):
        assert read_json(runs[True] / "dilution" / name) == read_json(runs[False] / "dilution" / name)
    stats = read_json(runs[True] / "hook_cache.json")
    # computed here or read from an earlier test's store (`LayerStore`): either way, hits past them
    assert stats["hits"] > stats["misses"] + stats["disk_hits"] > 0 and stats["bypasses"] == {}
    off_stats = read_json(runs[False] / "hook_cache.json")
    assert off_stats["hits"] == off_stats["misses"] == 0
    # the static point touches most forget questions: scored whole, it is the full evaluation, bit for bit
    from unlearn.eval.suite import EvalConfig, prepare_eval

    suite = prepare_eval(lm, EvalConfig(forget=[str(paths["forget"])], protocol="cloze", batch_size=4,
                                        mutual_info=False))  # fmt: skip
    with torch.inference_mode(), feature_edit(lm.model, sae, [5], "clamp", -50.0, hook_name=HOOK):
        full = suite.run(lm.model).questions
    got = pd.read_csv(runs[True] / "questions" / "clamp_n1_s-50.csv")
    got = got[got.role == "forget"].reset_index(drop=True)
    np.testing.assert_array_equal(got[ll].to_numpy(), full[ll].to_numpy())


def test_screening_gives_the_same_trials_with_and_without_the_cache(tiny, tmp_path, monkeypatch):
    from unlearn.clamp.screen import ScreenConfig, run_screen

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    lm = tiny("gemma2")
    sae = random_sae(64, 32, "standard", dtype=torch.float32)
    paths = _question_files(tmp_path)
    common = dict(feature_ids=[1, 2, 3, 4], scale=-50.0, clamp_unit="absolute", greedy=True, retain_budget=0.5,
                  controls=False, protocol="cloze", forget_tasks=[str(paths["forget"])],
                  retain_tasks=[str(paths["retain"])], known_only=False, batch_size=4)  # fmt: skip
    runs = {on: run_screen(ScreenConfig(**common, hook_cache=on, run_id=f"s{on}"), lm=lm, sae=sae)
            for on in (False, True)}  # fmt: skip
    for name in ("screen.json", "greedy.json", "test.json"):
        if (runs[False] / name).exists() or name != "test.json":
            assert read_json(runs[True] / name) == read_json(runs[False] / name), name
    stats = read_json(runs[True] / "hook_cache.json")
    assert stats["hits"] > 0 and stats["bypasses"] == {}
