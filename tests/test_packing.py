"""The packed letter scorer (a question's 24 orders behind one copy of their shared prefix) against the
same scorer forwarding every order alone, in float64 on tiny Gemma / Gemma 2 / Gemma 3."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import Q, build_model
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from unlearn.eval.packing import pack_prompts, shared_prefix_len
from unlearn.eval.scoring import ALL_ORDERS, letter_prompts, make_letter_scorer, score_letter

QUESTIONS = [
    Q("Which organ pumps blood through the body?", ["heart", "liver", "kidney", "lung"], 0),
    Q("What does the cell nucleus hold?", ["ATP", "DNA", "water only", "the mitochondria of the cell"], 1),
    Q("Which is a history topic?", ["enzymes", "genes", "the virus", "geography of the"], 3, "high_school_us_history"),
    Q("Mitochondria make what?", ["proteins", "DNA", "ATP", "A"], 2),
    Q("A short one?", ["a", "b", "c", "d"], 1, "human_aging"),
    Q(" ".join(["Which of these words names a part of the heart or the blood"] * 3) + "?",
      ["atrium", "the left ventricle of it", "aorta", "a valve"], 1),
]  # fmt: skip


def eager64(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kwargs):
    """Transformers' Gemma eager attention (`modeling_gemma2.eager_attention_forward`: soft-capped scores,
    additive mask) with the softmax in the model's dtype, not upcast to float32: a float64 model is then
    float64 throughout, so packed and unpacked rows can agree to 1e-9 (float32 softmax rounding gives ~1e-7)."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    weights = query @ key.transpose(2, 3) * (scaling if scaling is not None else module.head_dim**-0.5)
    if softcap is not None:
        weights = torch.tanh(weights / softcap) * softcap
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.softmax(weights, dim=-1)
    return (weights @ value).transpose(1, 2).contiguous(), weights


AttentionInterface.register("eager64", eager64)
AttentionMaskInterface.register("eager64", eager_mask)

WIDE = 128
"""A sliding window that holds every short prompt but not the long question's (nor a packed row)."""


@pytest.fixture(scope="module")
def models(tokenizer):
    """(family, window) -> float64 tiny model (the conftest architecture, window 32 or WIDE), attention
    `eager64`."""
    made = {}

    def make(family: str, window: int):
        if (family, window) not in made:
            model = build_model(family, len(tokenizer), sliding_window=window).double()
            model.set_attn_implementation("eager64")
            made[family, window] = model
        return made[family, window]

    return make


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
@pytest.mark.parametrize("chat", [False, True])
def test_packed_letter_scores_equal_unpacked_in_float64(models, tokenizer, family, chat):
    """Window WIDE: the short questions' orders pack (several rows each where `max_row` is small), the long
    question's prompts exceed the window and go plain under the model's own sliding mask. (Float64 with a
    window shorter than a batch's padding gives NaN in transformers' own mask — all-padding windows,
    float32 softmax — so the 32-token window is checked in float32 below.)"""
    questions = [*QUESTIONS[:2], QUESTIONS[-1]]
    grouped = letter_prompts(questions, tokenizer, chat_template=chat, orders=ALL_ORDERS)
    lengths = [len(p) for g in grouped for p in g]
    assert min(lengths) <= WIDE < max(lengths)  # both the packed and the past-the-window path run
    model = models(family, WIDE)
    alone = make_letter_scorer(model, tokenizer, batch_size=24, packed=False).score_groups(grouped)
    ref = score_letter(questions, tokenizer, lambda prompts: alone, chat_template=chat, orders=ALL_ORDERS)
    scorer = make_letter_scorer(model, tokenizer, batch_size=24)
    out = score_letter(questions, tokenizer, scorer, chat_template=chat, orders=ALL_ORDERS)
    np.testing.assert_allclose(out["scores"], ref["scores"], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(out["correct"], ref["correct"])
    np.testing.assert_array_equal(out["pred"], ref["pred"])
    rows = scorer.rows(grouped)
    plain = sorted(i for r in rows if r[1] is None for i, _ in r[2])
    # windowed: the long question's 24 prompts go plain (Gemma 1 has no window: it packs, in 2 rows)
    assert plain == ([] if family == "gemma" else list(range(48, 72)))
    assert sum(r[1] is not None for r in rows) >= (3 if family == "gemma" else 2)
    assert sum(len(r[0]) for r in rows) < 0.8 * sum(lengths)
    if chat:
        return
    # every order's raw scores, one row per batch and rows split by a small max_row
    one = make_letter_scorer(model, tokenizer, batch_size=1)
    one.max_row = 200
    assert sum(r[1] is not None for r in one.rows(grouped)) > 2
    torch.testing.assert_close(one.score_groups(grouped), alone, rtol=0, atol=1e-9)


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_short_window_forwards_long_prompts_plain(tiny, family):
    """The conftest models' 32-token window is shorter than every letter prompt: nothing packs, and the
    scores are the unpacked scorer's (float32, batched with padding)."""
    lm = tiny(family)
    grouped = letter_prompts(QUESTIONS[:3], lm.tokenizer, chat_template=True, orders=ALL_ORDERS)
    scorer = make_letter_scorer(lm.model, lm.tokenizer, batch_size=24)
    assert all(r[1] is None for r in scorer.rows(grouped))
    alone = make_letter_scorer(lm.model, lm.tokenizer, batch_size=1, packed=False).score_groups(grouped)
    torch.testing.assert_close(scorer.score_groups(grouped), alone, rtol=1e-5, atol=1e-5)


def test_packing_past_the_window_is_exact_only_with_a_sliding_mask(models, tokenizer):
    """Packed rows longer than Gemma 2's sliding window keep their scores because `Head.inputs` gives the
    sliding layers their own mask (per layer kind); one 4D mask for every layer (a decoder without
    per-kind masks) lets them see past the window and changes the scores."""
    model = models("gemma2", 32)
    grouped = letter_prompts(QUESTIONS[:2], tokenizer, chat_template=False, orders=ALL_ORDERS)
    scorer = make_letter_scorer(model, tokenizer, batch_size=24)
    alone = make_letter_scorer(model, tokenizer, packed=False).score_groups(grouped)
    scorer.window = float("inf")  # pack past the window
    assert any(r[1] is not None and len(r[0]) > 32 for r in scorer.rows(grouped))
    torch.testing.assert_close(scorer.score_groups(grouped), alone, rtol=0, atol=1e-9)
    scorer.head.layer_masks = ()  # one mask for all layers
    assert (scorer.score_groups(grouped) - alone).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["gemma", "gemma3"])
def test_orders_sharing_only_bos_and_none_at_all(models, tokenizer, family):
    """Prompts whose only shared token is BOS pack behind it; prompts sharing nothing go plain; a row limit
    splits a group into several rows behind copies of the prefix. All equal the prompts scored alone."""
    model = models(family, WIDE)
    bos = tokenizer.bos_token_id
    words = [
        tokenizer.encode(t, add_special_tokens=False) for t in ("heart liver", "DNA of the cell", "ATP A")
    ]
    groups = [[[bos, *w] for w in words], [words[0], words[1][:2]], [[bos, *words[2]]]]
    assert shared_prefix_len(groups[0]) == 1 and shared_prefix_len(groups[1]) == 0
    alone = make_letter_scorer(model, tokenizer, packed=False).score_groups(groups)
    for max_row in (1024, 8):
        scorer = make_letter_scorer(model, tokenizer, batch_size=4)
        scorer.max_row = max_row
        rows = scorer.rows(groups)
        assert sum(r[1] is not None for r in rows) == (max_row == 1024)  # only group 0 can pack
        torch.testing.assert_close(scorer.score_groups(groups), alone, rtol=0, atol=1e-9)


def test_pack_prompts_layout():
    groups = [[[2, 5, 6, 7], [2, 5, 8], [2, 5, 6, 9]], [[2, 4]], [[2, 1, 1], [3, 1]]]
    rows = pack_prompts(groups)
    assert rows[0] == ([2, 5, 6, 7, 8, 6, 9], [0, 0, 1, 1, 2, 3, 3], [(0, 3), (1, 4), (2, 6)])
    assert rows[1] == ([2, 4], None, [(3, 1)])  # a group of one
    assert rows[2:] == [([2, 1, 1], None, [(4, 2)]), ([3, 1], None, [(5, 1)])]  # nothing shared
    split = pack_prompts(groups[:1], limit=5)  # 2 5 6 7 8 fits, then a second copy of the prefix
    assert split == [([2, 5, 6, 7, 8], [0, 0, 1, 1, 2], [(0, 3), (1, 4)]), ([2, 5, 6, 9], None, [(2, 3)])]
    long = pack_prompts(groups[:1], window=3)  # the two 4-token prompts go plain, the 3-token one alone
    assert sorted(r[2][0][0] for r in long) == [0, 1, 2] and all(r[1] is None for r in long)
    assert pack_prompts(groups[:1], packed=False) == [
        (p, None, [(k, len(p) - 1)]) for k, p in enumerate(groups[0])
    ]
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # each prompt keeps its last token
