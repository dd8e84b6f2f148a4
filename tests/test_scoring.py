"""Scorers against an independent computation (the full model's logits in float64), padding invariance,
permutation/known logic with fake scorers, and the exact prompt text."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import Q

from unlearn.eval.prompts import encode_pair, encode_prompt, letter_prompt
from unlearn.eval.scoring import (
    ALL_ORDERS,
    _segment_mask,
    _segment_positions,
    letter_token_ids,
    make_letter_scorer,
    pack_choices,
    score_cloze,
    score_letter,
)

QUESTIONS = [
    Q("Which organ pumps blood through the body?", ["heart", "liver", "kidney", "lung"], 0),
    Q("What does the cell nucleus hold?", ["ATP", "DNA", "water only", "the mitochondria of the cell"], 1),
    Q(
        "Which is a history topic?",
        ["enzymes", "genes", "the virus", "geography of the"],
        3,
        "high_school_us_history",
    ),
    Q("Mitochondria make what?", ["proteins", "DNA", "ATP", "A"], 2),
    Q("A short one?", ["a", "b", "c", "d"], 1, "human_aging"),
]


def full_logits(model, ids: list[int]) -> torch.Tensor:
    """Reference: the whole model's logits (all positions, all vocabulary, soft-capped by the model)."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].double()


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_letter_scores_equal_full_model_and_padding_is_invisible(tiny, family):
    lm = tiny(family)
    prompts = [
        encode_prompt(letter_prompt(q, lm.tokenizer, chat_template=False), lm.tokenizer) for q in QUESTIONS
    ]
    assert len({len(p) for p in prompts}) > 1  # the batch really is padded
    batched = make_letter_scorer(lm.model, lm.tokenizer, batch_size=len(prompts))(prompts)
    single = torch.cat([make_letter_scorer(lm.model, lm.tokenizer, batch_size=1)([p]) for p in prompts])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    groups = letter_token_ids(lm.tokenizer)
    for p, row in zip(prompts, batched, strict=True):
        last = full_logits(lm.model, p)[-1]
        expected = torch.tensor([max(last[i].item() for i in g) for g in groups], dtype=torch.float64)
        torch.testing.assert_close(row.double(), expected, atol=1e-4, rtol=1e-4)


LONG = Q(
    " ".join(["Which of these words names a part of the heart or the blood"] * 3) + "?",
    ["atrium", "the left ventricle of it", "aorta", "a valve"],
    1,
)  # longer than the window


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_cloze_loglik_equals_float64_reference(tiny, family):
    """Packed answers (past the tiny models' 32-token sliding window, with a sliding mask of their own
    for the sliding layers) give each answer's log-likelihood under the whole model run on context +
    answer alone."""
    from unlearn.eval.scoring import cloze_rows

    lm = tiny(family)
    questions = [*QUESTIONS, LONG]
    packed_len = [len(pack_choices(*_pairs(q, lm.tokenizer))[0]) for q in questions]
    if family != "gemma":  # Gemma 1 has no sliding window
        assert min(packed_len) <= 32 < max(packed_len)  # rows within and past the window
    assert all(seg is not None for _, seg, _ in cloze_rows(questions, lm.tokenizer, lm.model))
    out = score_cloze(questions, lm.model, lm.tokenizer, batch_size=3)
    for qi, q in enumerate(questions):
        for ci, choice in enumerate(q.choices):
            ctx, cont = encode_pair(f"Question: {q.question}\nAnswer:", f" {choice}", lm.tokenizer)
            logp = torch.log_softmax(full_logits(lm.model, ctx + cont), dim=-1)
            ref = sum(logp[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont))
            assert out["ll"][qi, ci] == pytest.approx(ref, abs=1e-4)
    lengths = np.array([[len(c) for c in q.choices] for q in questions])
    assert (out["pred"] == out["ll"].argmax(1)).all()
    assert (out["pred_norm"] == (out["ll"] / lengths).argmax(1)).all()


def _pairs(q, tokenizer):
    pairs = [encode_pair(f"Question: {q.question}\nAnswer:", f" {c}", tokenizer) for c in q.choices]
    return pairs[0][0], [cont for _, cont in pairs]


def test_pack_choices_layout_positions_and_mask():
    ids, segments, reads = pack_choices([1, 2, 3], [[7], [8, 9], [10, 11, 12], [13]])
    assert ids == [1, 2, 3, 8, 10, 11]
    assert segments == [0, 0, 0, 2, 3, 3]
    assert reads == [[2], [2, 3], [2, 4, 5], [2]]
    seg_BT = torch.tensor([segments + [-1]])
    assert _segment_positions(seg_BT).tolist() == [[0, 1, 2, 3, 3, 4, 0]]
    sees = _segment_mask(seg_BT, torch.float32)[0, 0] == 0
    expected = torch.tensor(
        [  # keys: ctx ctx ctx s2 s3 s3 pad
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 1, 0, 0],
            [1, 1, 1, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 1],  # padding sees only itself
        ],
        dtype=torch.bool,
    )
    assert torch.equal(sees, expected)


def test_letter_token_ids_take_bare_and_spaced_letters(tokenizer):
    groups = letter_token_ids(tokenizer)
    for letter, group in zip("ABCD", groups, strict=True):
        decoded = {tokenizer.decode([i]) for i in group}
        assert letter in decoded and decoded <= {letter, " " + letter}


def always(letter_index: int):
    def scorer(prompts):
        out = torch.zeros(len(prompts), 4)
        out[:, letter_index] = 1.0
        return out

    return scorer


def test_always_A_knows_nothing_across_24_orders(tokenizer):
    out = score_letter(QUESTIONS, tokenizer, always(0), chat_template=False, orders=ALL_ORDERS)
    assert out["correct"].shape == (len(QUESTIONS), 24)
    assert not out["correct"].all(axis=1).any()  # known subset is empty
    # "A" is right exactly when the order puts the answer first: 6 of 24 orders for every question.
    np.testing.assert_array_equal(out["correct"].sum(axis=1), 6)


def test_always_A_is_known_when_every_order_puts_the_answer_first(tokenizer):
    answer_first = [o for o in ALL_ORDERS if o[0] == 0]  # orders keeping choice 0 first
    out = score_letter(QUESTIONS, tokenizer, always(0), chat_template=False, orders=answer_first)
    expected = np.array([q.answer == 0 for q in QUESTIONS])
    np.testing.assert_array_equal(out["correct"].all(axis=1), expected)
    out = score_letter(QUESTIONS, tokenizer, always(3), chat_template=False, orders=[(1, 2, 3, 0)])
    np.testing.assert_array_equal(out["pred"], 0)  # letter D shows original choice 0


def test_oracle_scorer_maps_permuted_letters_back(tokenizer):
    """A fake model that reads the prompt and picks the letter whose line holds the marked answer."""
    questions = [
        Q(f"q{i}?", [f"opt{k}" + ("*" if k == i % 4 else "") for k in range(4)], i % 4) for i in range(8)
    ]

    def oracle(prompts):
        out = torch.zeros(len(prompts), 4)
        for n, ids in enumerate(prompts):
            lines = tokenizer.decode(ids).splitlines()
            marked = next(line for line in lines if line.endswith("*"))
            out[n, "ABCD".index(marked[0])] = 1.0
        return out

    out = score_letter(questions, tokenizer, oracle, chat_template=False, orders=ALL_ORDERS)
    assert out["correct"].all()
    np.testing.assert_array_equal(out["pred"], [q.answer for q in questions])


def test_gemma2_chat_prompt_text_is_exact(tokenizer):
    q = Q("What is the basic unit of life?", ["the organ", "the tissue", "the cell", "the atom"], 2)
    expected = (
        "<bos><start_of_turn>user\n"
        "The following are multiple choice questions (with answers) about biology.\n"
        "What is the basic unit of life?\n"
        "A. the organ\nB. the tissue\nC. the cell\nD. the atom<end_of_turn>\n"
        "<start_of_turn>model\n"
        "Answer: ("
    )
    text = letter_prompt(q, tokenizer, chat_template=True)
    assert text == expected
    ids = encode_prompt(text, tokenizer)
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id  # no double BOS
    permuted = letter_prompt(q, tokenizer, chat_template=True, order=(2, 0, 1, 3))
    assert "A. the cell\nB. the organ\nC. the tissue\nD. the atom" in permuted


def test_base_prompt_text_and_subject_phrase(tokenizer):
    q = Q(
        "Who was the first US president?",
        ["Lincoln", "Washington", "Adams", "Grant"],
        1,
        "high_school_us_history",
    )
    expected = (
        "The following are multiple choice questions (with answers) about high school us history.\n"
        "Who was the first US president?\nA. Lincoln\nB. Washington\nC. Adams\nD. Grant\nAnswer: ("
    )
    assert letter_prompt(q, tokenizer, chat_template=False) == expected
    ids = encode_prompt(expected, tokenizer)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
