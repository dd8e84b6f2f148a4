"""Batched scorers that compute output logits only where they are needed.

Gemma's 256k-token output layer dominates CPU time (reference §5), so neither scorer asks the model for
its (batch, seq, vocab) logits: we run the decoder body (`model.get_decoder()`; layer hooks still act),
gather the final hidden states at the positions that matter, and apply the output head to those rows —
for the letter protocol only to the rows of the letter tokens. Gemma 2/3 final-logit soft-capping
(`tanh(z / cap) * cap`) is applied so log-probabilities equal the full model's (and lm-eval's).

Batches are right-padded: real tokens keep positions 0..n-1, padding sits after them behind the
attention mask, so padded and unpadded sequences give the same numbers (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import permutations

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from unlearn.hooks import text_config
from unlearn.prompts import (
    LETTERS,
    QuestionLike,
    cloze_context,
    cloze_continuation,
    encode_pair,
    encode_prompt,
    letter_prompt,
)

ALL_ORDERS: list[tuple[int, ...]] = list(permutations(range(4)))
"""The 24 orderings of four choices; a question is *known* if answered right in all of them (reference §1)."""

Progress = Callable[[int], None]
"""Called with the number of sequences just scored (drives a rich progress bar)."""


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

    @torch.no_grad()
    def hidden_at(self, seqs: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]) -> list[Tensor]:
        """Final hidden states (after the last norm) of each sequence at the given positions."""
        device = self.weight_VD.device
        lengths = [len(s) for s in seqs]
        T = max(lengths)
        ids_BT = torch.full((len(seqs), T), self.pad_id, dtype=torch.long)
        mask_BT = torch.zeros((len(seqs), T), dtype=torch.long)
        for b, seq in enumerate(seqs):
            ids_BT[b, : len(seq)] = torch.tensor(seq)
            mask_BT[b, : len(seq)] = 1
        out = self.body(input_ids=ids_BT.to(device), attention_mask=mask_BT.to(device), use_cache=False)
        hidden_BTD = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return [hidden_BTD[b, list(pos)] for b, pos in enumerate(positions)]


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
    progress: Progress | None = None,
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
            if progress:
                progress(len(batch))
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
    picked = scores.argmax(dim=-1).numpy()  # (n, n_orders) position in the permuted list
    orders_arr = np.asarray(orders)
    original = orders_arr[np.arange(len(orders))[None, :], picked]  # (n, n_orders) original choice index
    answers = np.array([q.answer for q in questions])[:, None]
    return {"pred": original[:, 0], "correct": original == answers, "scores": scores[:, 0].numpy()}


@torch.no_grad()
def score_cloze(
    questions: Sequence[QuestionLike],
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """Answer-text log-likelihood of each choice after `Question: …\\nAnswer:` (lm-eval's multiple-choice
    rule). `acc` takes the argmax of the summed log-probs, `acc_norm` of the sum divided by the choice's
    length in characters (lm-eval's `acc_norm`: `len(choice)`, without the delimiter).

    Returns `ll` (n, 4), `pred`, `pred_norm` (n,)."""
    head = Head(model)
    head.pad_id = tokenizer.pad_token_id or 0
    seqs, targets = [], []  # per (question, choice): input ids, continuation ids
    for q in questions:
        for choice in q.choices:
            ctx, cont = encode_pair(cloze_context(q.question), cloze_continuation(choice), tokenizer)
            seqs.append((ctx + cont)[:-1])
            targets.append(cont)
    ll = np.zeros(len(seqs))
    # Keep the choices of a question together in a batch: they share most of their length.
    for batch in _batches(len(seqs), [len(s) for s in seqs], batch_size):
        positions = [list(range(len(seqs[i]) - len(targets[i]), len(seqs[i]))) for i in batch]
        hidden = head.hidden_at([seqs[i] for i in batch], positions)
        logprobs_NV = torch.log_softmax(head.logits(torch.cat(hidden)), dim=-1)
        tgt = torch.tensor([t for i in batch for t in targets[i]], device=logprobs_NV.device)
        picked = logprobs_NV.gather(1, tgt[:, None])[:, 0].double().cpu()
        start = 0
        for i in batch:
            ll[i] = picked[start : start + len(targets[i])].sum().item()
            start += len(targets[i])
        if progress:
            progress(len(batch))
    ll_N4 = ll.reshape(len(questions), 4)
    lengths_N4 = np.array([[len(c) for c in q.choices] for q in questions], dtype=float)
    return {"ll": ll_N4, "pred": ll_N4.argmax(axis=1), "pred_norm": (ll_N4 / lengths_N4).argmax(axis=1)}
