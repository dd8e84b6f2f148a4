"""`batches.right_padded` against torch's own `pad_sequence` (the library that defines right padding)."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from unlearn.batches import right_padded


def test_right_padded_matches_pad_sequence():
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 50, (int(n),), generator=gen).tolist() for n in [5, 1, 9, 9, 3]]
    ids_BT, mask_BT = right_padded(seqs, pad_id=0)
    want_BT = pad_sequence([torch.tensor(s) for s in seqs], batch_first=True, padding_value=0)
    ones_BT = pad_sequence([torch.ones(len(s), dtype=torch.long) for s in seqs], batch_first=True)
    assert ids_BT.dtype == mask_BT.dtype == torch.long
    assert torch.equal(ids_BT, want_BT) and torch.equal(mask_BT, ones_BT)
    ids7_BT, _ = right_padded(seqs, pad_id=7)  # the pad id fills exactly the masked-out slots
    assert torch.equal(ids7_BT[mask_BT == 0], torch.full(((mask_BT == 0).sum().item(),), 7))
