"""Batched scorers that compute output logits only where they are needed.

Gemma's 256k-token output layer dominates CPU time (Gemma 3 270M, batch 8×128: 566 tok/s with all logits, 1,245 keeping one position), so neither scorer asks the model for
its (batch, seq, vocab) logits: we run the decoder body (`model.get_decoder()`; layer hooks still act),
gather the final hidden states at the positions that matter, and apply the output head to those rows —
for the letter protocol only to the rows of the letter tokens. Gemma 2/3 final-logit soft-capping
(`tanh(z / cap) * cap`) is applied so log-probabilities equal the full model's (and lm-eval's).

Batches are right-padded: real tokens keep positions 0..n-1, padding sits after them behind the
attention mask, so padded and unpadded sequences give the same numbers (tested). The cloze scorer
packs a question's four answers behind one copy of its context (`pack_choices`), with a 4D mask and
position ids that make each answer see exactly what it would see alone (tested against the full model);
the letter scorer packs a question's 24 answer orders behind one copy of their shared prefix the same
way (`unlearn.eval.packing`; tested equal to scoring each order alone).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import permutations
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from unlearn.batches import right_padded
from unlearn.checks import require_finite
from unlearn.distributed import Shard
from unlearn.eval.packing import MAX_ROW, LetterRow, pack_prompts
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
        self.layer_masks = layer_mask_types(model)
        self.window = sliding_window(model)

    def logits(self, hidden_ND: Tensor, rows: Tensor | None = None) -> Tensor:
        """Float32 logits (float64 for a float64 model) of the hidden rows for all vocabulary rows, or only
        `rows` (token ids)."""
        weight = self.weight_VD if rows is None else self.weight_VD[rows]
        logits = hidden_ND.to(weight.device, weight.dtype) @ weight.T  # layers may sit elsewhere (device_map)
        if self.bias_V is not None:
            logits = logits + (self.bias_V if rows is None else self.bias_V[rows])
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float64 models stay float64
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
            pos_BT = _segment_positions(seg_BT)
            mask = _segment_mask(seg_BT, dtype).to(device)
            if T > self.window and self.layer_masks:  # past the window: one mask per layer kind
                sliding = _segment_mask(seg_BT, dtype, positions=pos_BT, window=self.window).to(device)
                # every kind the layers name, and always the full mask (`gates.real_tokens` reads it)
                kinds = dict.fromkeys([*self.layer_masks, "full_attention"])
                mask = {kind: sliding if kind == "sliding_attention" else mask for kind in kinds}
            extra = {"attention_mask": mask, "position_ids": pos_BT.to(device)}
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


def sliding_window(model: nn.Module) -> float:
    """The model's sliding attention window in tokens (inf without one)."""
    return getattr(text_config(model), "sliding_window", None) or math.inf


def layer_mask_types(model: nn.Module) -> tuple[str, ...]:
    """The attention kinds of a decoder that takes one mask per kind (transformers' `layer_types`: Gemma 2
    and 3 alternate `sliding_attention` and `full_attention` layers and accept a dict of 4D masks keyed by
    kind), or () for a model with one mask for every layer."""
    kinds = getattr(text_config(model), "layer_types", None)
    return tuple(dict.fromkeys(kinds)) if kinds and "sliding_attention" in kinds else ()


def _segment_mask(
    seg_BT: Tensor, dtype: torch.dtype, *, positions: Tensor | None = None, window: float = math.inf
) -> Tensor:
    """Additive (B, 1, T, T) mask: query q sees key k <= q when k is context (segment 0) or in q's segment,
    and, with a sliding `window`, when their `positions` are less than `window` apart (transformers'
    sliding rule, q − k < window, on the positions each token has in its own unpacked sequence).

    Padding queries see themselves, so no softmax row is empty (no NaN); nothing real sees padding."""
    T = seg_BT.shape[1]
    idx = torch.arange(T)
    key, query = seg_BT[:, None, :], seg_BT[:, :, None]
    allowed = (idx[None, :, None] >= idx[None, None, :]) & (query >= 0) & ((key == 0) | (key == query))
    if positions is not None and window < math.inf:
        allowed &= positions[:, :, None] - positions[:, None, :] < window
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


class LetterScorer(Protocol):
    """Token-id prompts -> (n, 4) letter scores; the real one runs the model, tests pass fakes."""

    def __call__(self, prompts: list[list[int]]) -> Tensor: ...


class ModelLetterScorer:
    """Letter logits (max over "A"/" A" per letter) at the last token of each prompt.

    `score_groups` takes prompts grouped by question and, with `packed` (the default), forwards each
    group behind one copy of its shared token prefix (`unlearn.eval.packing`): exact, since every order
    sees exactly the tokens and positions it would see alone (tested in float64 against `packed=False`).
    `batch_size` counts prompts (a batch is filled with rows until it holds that many), so memory stays
    near the unpacked scorer's."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, *, batch_size: int = 16,
                 advance: Advance | None = None, packed: bool = True, max_row: int = MAX_ROW):  # fmt: skip
        self.head = Head(model)
        self.head.pad_id = tokenizer.pad_token_id or 0
        groups = letter_token_ids(tokenizer)
        self.rows_R = torch.tensor([i for g in groups for i in g], device=self.head.weight_VD.device)
        self.slots = [len(g) for g in groups]
        self.batch_size, self.advance, self.packed = batch_size, advance, packed
        self.window = sliding_window(model)
        self.max_row = max_row

    def __call__(self, prompts: list[list[int]]) -> Tensor:
        """Every prompt on its own (no grouping known)."""
        return self.score_groups([[p] for p in prompts])

    def rows(self, groups: Sequence[Sequence[list[int]]]) -> list[LetterRow]:
        return pack_prompts(groups, window=self.window, limit=self.max_row, packed=self.packed)

    @torch.no_grad()
    def score_groups(self, groups: Sequence[Sequence[list[int]]]) -> Tensor:
        """(total prompts, 4) letter scores of the grouped prompts, in order."""
        rows = self.rows(groups)
        out_N4 = torch.zeros((sum(len(g) for g in groups), 4), dtype=torch.float64)
        filled_N4 = torch.zeros(out_N4.shape, dtype=torch.bool)
        shard = Shard()  # under `accelerate launch`: this rank's batches only, gathered below
        for kind in (True, False):  # packed rows (4D mask) and plain rows (the model's own mask) apart
            group = [r for r in rows if (r[1] is not None) == kind]
            for batch in _row_batches(group, self.batch_size):
                if not shard.take():
                    if self.advance:
                        self.advance(sum(len(r[2]) for r in batch))
                    continue
                hidden = self.head.hidden_at(
                    [r[0] for r in batch],
                    [[pos for _, pos in r[2]] for r in batch],
                    [r[1] for r in batch] if kind else None,
                )
                logits_NR = self.head.logits(torch.cat(hidden), self.rows_R)
                cols, start = [], 0
                for width in self.slots:  # max over "A"/" A" per letter
                    cols.append(logits_NR[:, start : start + width].max(dim=1).values)
                    start += width
                which = torch.tensor([i for r in batch for i, _ in r[2]])
                out_N4[which] = torch.stack(cols, dim=1).double().cpu()
                filled_N4[which] = True
                if self.advance:
                    self.advance(len(which))
        return shard.merge(out_N4, filled_N4)


def _row_batches(rows: list[LetterRow], batch_size: int) -> list[list[LetterRow]]:
    """Rows longest first, each batch holding rows until it scores `batch_size` prompts (at least one row)."""
    batches: list[list[LetterRow]] = []
    count = batch_size
    for row in sorted(rows, key=lambda r: -len(r[0])):
        if count + len(row[2]) > batch_size:
            batches.append([])
            count = 0
        batches[-1].append(row)
        count += len(row[2])
    return batches


def make_letter_scorer(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    batch_size: int = 16,
    advance: Advance | None = None,
    packed: bool = True,
) -> ModelLetterScorer:
    """The model's letter scorer; `packed=False` forwards every order as its own sequence (tests, bench)."""
    return ModelLetterScorer(model, tokenizer, batch_size=batch_size, advance=advance, packed=packed)


def letter_prompts(
    questions: Sequence[QuestionLike],
    tokenizer: PreTrainedTokenizerBase,
    *,
    chat_template: bool,
    orders: Sequence[Sequence[int]],
) -> list[list[list[int]]]:
    """Per question, the token ids of its letter prompt under each order."""
    return [
        [
            encode_prompt(letter_prompt(q, tokenizer, chat_template=chat_template, order=o), tokenizer)
            for o in orders
        ]
        for q in questions
    ]


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
    grouped = letter_prompts(questions, tokenizer, chat_template=chat_template, orders=orders)
    if hasattr(scorer, "score_groups"):  # the model's scorer packs each question's orders
        scores = scorer.score_groups(grouped)
    else:
        scores = scorer([p for group in grouped for p in group])
    scores = scores.reshape(len(questions), len(orders), 4)
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
    choice where the packed row would be longer than the model's sliding attention window and the model
    takes one mask for all its layers (a decoder with per-kind masks gets a sliding one: `Head.inputs`)."""
    window = math.inf if layer_mask_types(model) else sliding_window(model)
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

    A question's choices share one packed forward (`pack_choices`); past the model's sliding attention
    window its sliding layers get their own 4D mask (Gemma 2 / 3 take one per layer kind), and a model that
    takes one mask for all layers gets one sequence per choice there, like lm-eval. `batch_size` counts
    sequences.

    Returns `ll` (n, 4), `pred`, `pred_norm` (n,)."""
    head = Head(model)
    head.pad_id = tokenizer.pad_token_id or 0
    rows = cloze_rows(questions, tokenizer, model)
    ll_N4 = np.zeros((len(questions), 4))
    filled_N4 = np.zeros(ll_N4.shape, dtype=bool)
    shard = Shard()  # under `accelerate launch`: this rank's batches only, gathered below
    packed = [i for i, r in enumerate(rows) if r[1] is not None]
    plain = [i for i, r in enumerate(rows) if r[1] is None]
    for group in (packed, plain):
        lengths = [len(rows[i][0]) for i in group]
        for batch in _batches(len(group), lengths, batch_size):
            batch_rows = [rows[group[i]] for i in batch]
            reads = [read for row in batch_rows for read in row[2]]
            if not shard.take():
                if advance:
                    advance(len(reads))
                continue
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
                filled_N4[qi, ci] = True
                start += len(targets)
            if advance:
                advance(len(reads))
    ll_N4 = shard.merge(ll_N4, filled_N4)
    require_finite(ll_N4, "answer log-likelihoods", "the cloze scorer's output")  # NaN would argmax to 0
    lengths_N4 = np.array([[len(c) for c in q.choices] for q in questions], dtype=float)
    return {"ll": ll_N4, "pred": ll_N4.argmax(axis=1), "pred_norm": (ll_N4 / lengths_N4).argmax(axis=1)}
