"""Token id lists to model inputs: the one right-padded batch builder (feature counting, activation
collection, scoring) and the BOS every text window starts with."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def right_padded(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """`input_ids` and `attention_mask`, both long (B, T) with T the longest sequence: each sequence at
    the start of its row, `pad_id` (mask 0) after it. Right padding keeps every real token at the
    position it has alone, so a causal model sees the same prefix whatever else is in the batch."""
    T = max((len(s) for s in seqs), default=0)
    ids_BT = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask_BT = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, seq in enumerate(seqs):
        ids_BT[b, : len(seq)] = torch.tensor(seq)
        mask_BT[b, : len(seq)] = 1
    return ids_BT, mask_BT


def bos_prefix(tokenizer) -> list[int]:
    """What every text window starts with: `[BOS]` where the tokenizer has one (Gemma is very sensitive
    to a missing BOS; lm-eval's `add_bos_token`), else nothing."""
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
