"""The keyed cache of selection passes: a hit runs no forward and equals recomputing bit for bit; any
change of weights, SAE or token ids is a miss; a colliding entry is never read as a hit."""

from __future__ import annotations

import json

import torch
from test_select import FORGET, RETAIN, random_sae

from unlearn import results
from unlearn.clamp import feature_stats as fs
from unlearn.results import cached_json

HOOK = "blocks.1.hook_resid_post"
FEATURES = [0, 3, 5, 8, 13]


class Forwards:
    """Counts forwards of the model's decoder body."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.get_decoder().register_forward_pre_hook(self._count)

    def _count(self, *_):
        self.n += 1


def _setup(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache"))
    lm = tiny("gemma3")
    tok = lm.tokenizer
    chunks = list(fs.token_chunks(FORGET + RETAIN, tok, max_length=12))
    kw = {"pad_id": tok.pad_token_id, "bos_id": tok.bos_token_id, "batch_tokens": 48}
    return lm, random_sae(hook=HOOK), chunks, kw


def _equal_stats(a: fs.FeatureStats, b: fs.FeatureStats) -> bool:
    return (
        a.n_tokens == b.n_tokens
        and torch.equal(a.fire_count_F, b.fire_count_F)
        and torch.equal(a.act_sum_F, b.act_sum_F)
    )


def test_counters_hit_runs_no_forward_and_equals_recomputing(tiny, tmp_path, monkeypatch):
    lm, sae, chunks, kw = _setup(tiny, tmp_path, monkeypatch)
    fresh = fs._accumulate(lm.model, sae, HOOK, chunks, **kw, bar=None, desc="x")
    count = Forwards(lm.model)
    first = fs.accumulate(lm.model, sae, HOOK, chunks, **kw)
    after_first = count.n
    second = fs.accumulate(lm.model, sae, HOOK, chunks, **kw)
    count.handle.remove()
    assert after_first > 1 and count.n == after_first  # the second call read the cache
    assert _equal_stats(first, fresh) and _equal_stats(second, fresh)
    assert second.act_sum_F.dtype == torch.float64 and second.fire_count_F.sum() > 0

    # another SAE (retrained in place), other token ids, other batching: each a miss, each right
    other_sae = random_sae(hook=HOOK, seed=3)
    with torch.no_grad():
        sae.W_enc.copy_(other_sae.W_enc)
    count = Forwards(lm.model)
    moved = fs.accumulate(lm.model, sae, HOOK, chunks, **kw)
    assert count.n > 0 and _equal_stats(
        moved, fs._accumulate(lm.model, sae, HOOK, chunks, **kw, bar=None, desc="x")
    )
    assert not _equal_stats(moved, fresh)
    edited = [list(c) for c in chunks]
    edited[-1][-1] = edited[0][1]
    n = count.n
    fs.accumulate(lm.model, sae, HOOK, edited, **kw)
    assert count.n > n
    n = count.n
    fs.accumulate(lm.model, sae, HOOK, chunks, **{**kw, "batch_tokens": 24})
    assert count.n > n
    count.handle.remove()


def test_contexts_and_summed_acts_hit_equal_recomputing(tiny, tmp_path, monkeypatch):
    lm, sae, chunks, kw = _setup(tiny, tmp_path, monkeypatch)
    tok = lm.tokenizer
    want_ctx = fs._top_contexts(lm.model, sae, HOOK, chunks, FEATURES, tok, k=3, window=(12, 4),
                                batch_tokens=48, bar=None)  # fmt: skip
    want_sum = fs._summed_acts(lm.model, sae, HOOK, chunks, FEATURES, **kw)
    fs.top_contexts(lm.model, sae, HOOK, chunks, FEATURES, tok, k=3, batch_tokens=48)
    fs.summed_acts(lm.model, sae, HOOK, chunks, FEATURES, **kw)
    count = Forwards(lm.model)
    got_ctx = fs.top_contexts(lm.model, sae, HOOK, chunks, FEATURES, tok, k=3, batch_tokens=48)
    got_sum = fs.summed_acts(lm.model, sae, HOOK, chunks, FEATURES, **kw)
    assert count.n == 0
    assert got_ctx == want_ctx and list(got_ctx) == FEATURES
    assert any(v["contexts"] for v in got_ctx.values())
    assert torch.equal(got_sum, want_sum) and got_sum.dtype == torch.float64 and got_sum.abs().sum() > 0
    fs.summed_acts(lm.model, sae, HOOK, chunks, FEATURES[:2], **kw)  # other features: computed
    assert count.n > 0
    count.handle.remove()


def test_a_colliding_or_unreadable_entry_is_recomputed(tmp_path, monkeypatch):
    path = tmp_path / "entry.json"
    monkeypatch.setattr(results, "keyed_cache_path", lambda kind, key: path)
    assert cached_json("k", {"a": 1}, lambda: [1.5, 2]) == [1.5, 2]
    assert cached_json("k", {"a": 1}, lambda: "not called") == [1.5, 2]
    assert cached_json("k", {"a": 2}, lambda: {"x": 0.1}) == {"x": 0.1}  # same path, other key
    assert json.loads(path.read_text())["key"] == {"a": 2}
    path.write_text("{truncated")
    assert cached_json("k", {"a": 2}, lambda: 7) == 7
    value = 0.1 + 0.2  # floats come back exactly
    cached_json("k", {"f": 1}, lambda: [value])
    assert cached_json("k", {"f": 1}, lambda: None)[0] == value
