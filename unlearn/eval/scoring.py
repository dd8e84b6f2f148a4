"""Batched scorers that compute output logits only where they are needed.

Gemma's 256k-token output layer dominates CPU time (Gemma 3 270M, batch 8×128: 566 tok/s with all logits, 1,245 keeping one position), so neither scorer asks the model for
its (batch, seq, vocab) logits: we run the decoder body (`model.get_decoder()`; layer hooks still act),
gather the final hidden states at the positions that matter, and apply the output head to those rows —
for the letter protocol only to the rows of the letter tokens. Gemma 2/3 final-logit soft-capping
(`tanh(z / cap) * cap`) is applied so log-probabilities equal the full model's (and lm-eval's).

Batches are right-padded: real tokens keep positions 0..n-1, padding sits after them behind the
attention mask, so padded and unpadded sequences give the same numbers (tested). The cloze scorer
packs a question's four answers behind one copy of its context (`pack_choices`), with a 4D mask and
position ids that make each answer see exactly what it would see alone (tested against the full model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import permutations

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from unlearn.batches import right_padded
from unlearn.checks import require_finite
from unlearn.eval.prompts import (
    LETTERS,
    QuestionLike,
    cloze_context,
    cloze_continuation,
    encode_pair,
    encode_prompt,
    letter_prompt,
)
from unlearn.hooks import text_config

ALL_ORDERS: list[tuple[int, ...]] = list(permutations(range(4)))
"""The 24 orderings of four choices; a question is *known* if answered right in all of them (Farrell et al., arXiv 2410.19278; SAEBench)."""

Advance = Callable[[int], None]
"""Called with the number of sequences just scored (drives a rich progress bar: `unlearn.progress`)."""


class Head:
    """The decoder body, output projection and soft-cap of a causal LM, found without per-model code."""

    def __init__(self, model: nn.Module):
        self.body = model.get_decoder()
        head = model.get_output_embeddings()
        self.weight_VD: Tensor = head.weight
        self.bias_V: Tensor | None = getattr(head, "bias", None)
        self.softcap: float | None = getattr(text_config(model), "final_logit_softcapping", None)
        self.pad_id = 0

    def logits(self, hidden_ND: Tensor, rows: Tensor | None = None) -> Tensor:
        """Float32 logits of the hidden rows for all vocabulary rows, or only `rows` (token ids)."""
        weight = self.weight_VD if rows is None else self.weight_VD[rows]
        logits = hidden_ND.to(weight.dtype) @ weight.T
        if self.bias_V is not None:
            logits = logits + (self.bias_V if rows is None else self.bias_V[rows])
        logits = logits.float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def inputs(self, seqs: Sequence[Sequence[int]], segments: Sequence[Sequence[int]] | None = None) -> dict:
        """Model inputs for right-padded sequences; with `segments`, the packed 4D mask and position ids
        (see `hidden_at`)."""
        device = self.weight_VD.device
        ids_BT, mask_BT = right_padded(seqs, self.pad_id)
        T = ids_BT.shape[1]
        extra = {}
        if segments is not None:
            seg_BT = torch.full((len(seqs), T), -1, dtype=torch.long)  # -1: padding
            for b, seg in enumerate(segments):
                seg_BT[b, : len(seg)] = torch.tensor(seg)
            dtype = self.weight_VD.dtype
            extra = {
                "attention_mask": _segment_mask(seg_BT, dtype).to(device),
                "position_ids": _segment_positions(seg_BT).to(device),
            }
        return {"input_ids": ids_BT.to(device), "attention_mask": mask_BT.to(device), **extra}

    @torch.no_grad()
    def hidden_at(
        self,
        seqs: Sequence[Sequence[int]],
        positions: Sequence[Sequence[int]],
        segments: Sequence[Sequence[int]] | None = None,
    ) -> list[Tensor]:
        """Final hidden states (after the last norm) of each sequence at the given positions.

        With `segments` (see `pack_choices`), each sequence is a packed one: segment-0 tokens form a
        shared context and a token of segment k > 0 sees that context and the earlier tokens of its own
        segment only, at the positions it would have without the other segments."""
        inputs = self.inputs(seqs, segments)
        out = self.body(**inputs, use_cache=False)
        hidden_BTD = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return [hidden_BTD[b, list(pos)] for b, pos in enumerate(positions)]


def _segment_mask(seg_BT: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive (B, 1, T, T) mask: query q sees key k <= q when k is context (segment 0) or in q's segment.

    Padding queries see themselves, so no softmax row is empty (no NaN); nothing real sees padding."""
    T = seg_BT.shape[1]
    idx = torch.arange(T)
    key, query = seg_BT[:, None, :], seg_BT[:, :, None]
    allowed = (idx[None, :, None] >= idx[None, None, :]) & (query >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(T, dtype=torch.bool)
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def _segment_positions(seg_BT: Tensor) -> Tensor:
    """Position ids of packed sequences: context tokens 0..n-1, every segment's tokens n, n+1, ...
    (a token's rank among the earlier tokens of its own segment, offset by the context length)."""
    T = seg_BT.shape[1]
    earlier = torch.ones(T, T, dtype=torch.bool).tril()
    rank_BT = ((seg_BT[:, :, None] == seg_BT[:, None, :]) & earlier).sum(-1) - 1
    pos_BT = rank_BT + (seg_BT > 0) * (seg_BT == 0).sum(1, keepdim=True)
    return pos_BT.masked_fill(seg_BT < 0, 0)


def pack_choices(ctx: list[int], conts: Sequence[list[int]]) -> tuple[list[int], list[int], list[list[int]]]:
    """The context once, then each continuation but its last token, as one sequence.

    Scoring continuation i needs the logits at the last context token and at its own tokens but the
    last; packing them shares the context's forward across choices (a cloze context is ~16 tokens and an
    answer ~1.5 on the offline sets, so ~3.5x fewer tokens). Returns ids, segment ids (0 = context,
    i + 1 = continuation i) and, per continuation, the positions whose logits predict its tokens."""
    ids, segments, reads = list(ctx), [0] * len(ctx), []
    for i, cont in enumerate(conts):
        reads.append([len(ctx) - 1] + list(range(len(ids), len(ids) + len(cont) - 1)))
        ids += cont[:-1]
        segments += [i + 1] * (len(cont) - 1)
    return ids, segments, reads


def _batches(n_items: int, lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches, longest first (like lm-eval) so padding is small and a memory error shows early."""
    order = sorted(range(n_items), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, n_items, batch_size)]


def letter_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Per letter, the single-token ids among "A" and " A" (SAEBench takes the larger of the two logits)."""
    ids = []
    for letter in LETTERS:
        found = []
        for text in (letter, " " + letter):
            tok = tokenizer.encode(text, add_special_tokens=False)
            if len(tok) == 1 and tok[0] not in found:
                found.append(tok[0])
        if not found:
            raise ValueError(f"tokenizer has no single token for letter {letter!r}")
        ids.append(found)
    return ids


LetterScorer = Callable[[list[list[int]]], Tensor]
"""Token-id prompts -> (n, 4) letter scores; the real one runs the model, tests pass fakes."""


def make_letter_scorer(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    batch_size: int = 16,
    advance: Advance | None = None,
) -> LetterScorer:
    head = Head(model)
    head.pad_id = tokenizer.pad_token_id or 0
    groups = letter_token_ids(tokenizer)
    rows = torch.tensor([i for g in groups for i in g], device=head.weight_VD.device)
    slots = [[k for k, _ in enumerate(g)] for g in groups]

    @torch.no_grad()
    def score(prompts: list[list[int]]) -> Tensor:
        out_N4 = torch.empty((len(prompts), 4))
        for batch in _batches(len(prompts), [len(p) for p in prompts], batch_size):
            seqs = [prompts[i] for i in batch]
            hidden = head.hidden_at(seqs, [[len(s) - 1] for s in seqs])
            logits_BR = head.logits(torch.cat(hidden), rows)
            start, cols = 0, []
            for slot in slots:  # max over "A"/" A" per letter
                cols.append(logits_BR[:, start : start + len(slot)].max(dim=1).values)
                start += len(slot)
            out_N4[batch] = torch.stack(cols, dim=1).cpu()
            if advance:
                advance(len(batch))
        return out_N4

    return score


def score_letter(
    questions: Sequence[QuestionLike],
    tokenizer: PreTrainedTokenizerBase,
    scorer: LetterScorer,
    *,
    chat_template: bool,
    orders: Sequence[Sequence[int]] = ((0, 1, 2, 3),),
) -> dict[str, np.ndarray]:
    """Letter-protocol answers of each question under each choice order.

    Returns `pred` (n,) the original index of the choice picked in the first order, `correct` (n, n_orders)
    booleans, and `scores` (n, 4) letter scores of the first order. A question is *known* when
    `correct.all(axis=1)` with `orders=ALL_ORDERS`.
    """
    prompts = [
        encode_prompt(letter_prompt(q, tokenizer, chat_template=chat_template, order=order), tokenizer)
        for q in questions
        for order in orders
    ]
    scores = scorer(prompts).reshape(len(questions), len(orders), 4)
    require_finite(scores, "letter logits", "the letter scorer's output")  # NaN would argmax to "A"
    picked = scores.argmax(dim=-1).numpy()  # (n, n_orders) position in the permuted list
    orders_arr = np.asarray(orders)
    original = orders_arr[np.arange(len(orders))[None, :], picked]  # (n, n_orders) original choice index
    answers = np.array([q.answer for q in questions])[:, None]
    return {"pred": original[:, 0], "correct": original == answers, "scores": scores[:, 0].numpy()}


ClozeRow = tuple[list[int], list[int] | None, list[tuple[int, int, list[int], list[int]]]]
"""(token ids, segment ids or None, [(question, choice, read positions, target ids)])."""


def cloze_rows(questions: Sequence[QuestionLike], tokenizer, model: nn.Module) -> list[ClozeRow]:
    """The sequences `score_cloze` forwards: one packed row per question (`pack_choices`), or one row per
    choice where the packed row would be longer than the model's sliding attention window."""
    window = getattr(text_config(model), "sliding_window", None) or math.inf
    rows: list[ClozeRow] = []
    for qi, q in enumerate(questions):
        pairs = [encode_pair(cloze_context(q.question), cloze_continuation(c), tokenizer) for c in q.choices]
        ctx, conts = pairs[0][0], [cont for _, cont in pairs]  # encode_pair: ctx is the same for all
        ids, segments, reads = pack_choices(ctx, conts)
        if len(ids) <= window:
            rows.append(
                (ids, segments, [(qi, ci, r, t) for ci, (r, t) in enumerate(zip(reads, conts, strict=True))])
            )
        else:  # one sequence per choice
            for ci, (c, cont) in enumerate(pairs):
                seq = (c + cont)[:-1]
                rows.append((seq, None, [(qi, ci, list(range(len(c) - 1, len(seq))), cont)]))
    return rows


@torch.no_grad()
def score_cloze(
    questions: Sequence[QuestionLike],
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    batch_size: int = 16,
    advance: Advance | None = None,
) -> dict[str, np.ndarray]:
    """Answer-text log-likelihood of each choice after `Question: …\\nAnswer:` (lm-eval's multiple-choice
    rule). `acc` takes the argmax of the summed log-probs, `acc_norm` of the sum divided by the choice's
    length in characters (lm-eval's `acc_norm`: `len(choice)`, without the delimiter).

    A question's choices share one packed forward (`pack_choices`) unless the packed sequence is longer
    than the model's sliding attention window, where one 4D mask cannot express both window sizes; those
    questions get one sequence per choice, like lm-eval. `batch_size` counts sequences.

    Returns `ll` (n, 4), `pred`, `pred_norm` (n,)."""
    head = Head(model)
    head.pad_id = tokenizer.pad_token_id or 0
    rows = cloze_rows(questions, tokenizer, model)
    ll_N4 = np.zeros((len(questions), 4))
    packed = [i for i, r in enumerate(rows) if r[1] is not None]
    plain = [i for i, r in enumerate(rows) if r[1] is None]
    for group in (packed, plain):
        lengths = [len(rows[i][0]) for i in group]
        for batch in _batches(len(group), lengths, batch_size):
            batch_rows = [rows[group[i]] for i in batch]
            reads = [read for row in batch_rows for read in row[2]]
            # a row's choices all read its last context token: compute each position's logits once
            unique = [sorted({p for read in row[2] for p in read[2]}) for row in batch_rows]
            hidden = head.hidden_at(
                [row[0] for row in batch_rows],
                unique,
                [row[1] for row in batch_rows] if group is packed else None,
            )
            logits_NV = head.logits(torch.cat(hidden))
            log_z_N = torch.logsumexp(logits_NV, dim=-1)
            slot, offset = [], 0
            for row, uniq in zip(batch_rows, unique, strict=True):
                where = {p: offset + k for k, p in enumerate(uniq)}
                slot += [where[p] for _, _, positions, _ in row[2] for p in positions]
                offset += len(uniq)
            slot_t = torch.tensor(slot, device=logits_NV.device)
            tgt = torch.tensor([t for read in reads for t in read[3]], device=logits_NV.device)
            picked = (logits_NV[slot_t, tgt] - log_z_N[slot_t]).double().cpu()
            start = 0
            for qi, ci, _, targets in reads:
                ll_N4[qi, ci] = picked[start : start + len(targets)].sum().item()
                start += len(targets)
            if advance:
                advance(len(reads))
    require_finite(ll_N4, "answer log-likelihoods", "the cloze scorer's output")  # NaN would argmax to 0
    lengths_N4 = np.array([[len(c) for c in q.choices] for q in questions], dtype=float)
    return {"ll": ll_N4, "pred": ll_N4.argmax(axis=1), "pred_norm": (ll_N4 / lengths_N4).argmax(axis=1)}
