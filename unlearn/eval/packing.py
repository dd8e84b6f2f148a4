"""Letter prompts packed behind one copy of their shared token prefix.

The 24 answer orders of a letter question (Farrell et al., arXiv 2410.19278; SAEBench's known-question
filter, `sae_bench/evals/unlearning/`) differ only after the question: the chat template's turn header, the
instruction line and the question are the same tokens in all of them. A packed row holds that prefix once,
then each order's own tokens as a segment; `scoring.Head.inputs(..., segments=)` turns the segment ids into
a 4D mask and position ids under which every segment sees the prefix and itself only, at the positions it
would have alone (the layout `scoring.pack_choices` gives cloze answers). The letter logits of an order
are read at the last token of its segment.

Sliding attention (Gemma 2/3): with a 4D mask the model applies no window of its own (transformers'
eager and SDPA attention take the window from the mask alone), so the mask must keep every query inside
its window on the *logical* positions. Under the segment mask a token sees only its prefix and its own
segment, whose logical distances are below the prompt's length: a prompt no longer than the window is
exact however long its row, and a longer one is forwarded plain, with the model's own 2D mask (and so its
window). Rows are at most `MAX_ROW` tokens, because a packed row's masked attention is quadratic in its
length; orders that do not fit start another row behind another copy of the prefix, and a row left with
one order is forwarded as the plain prompt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LetterRow = tuple[list[int], list[int] | None, list[tuple[int, int]]]
"""(token ids, segment ids or None for a plain row, [(prompt index, position whose logits score it)])."""

MAX_ROW = 1024
"""Longest packed row in tokens: past this, the masked (mostly zero) attention of a long row costs more
than the copies of the prefix it saves."""


def shared_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix, kept below the shortest prompt's length so that every
    prompt keeps at least its last token (the one whose logits score it) in its own segment."""
    if not prompts:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def pack_prompts(
    groups: Sequence[Sequence[Sequence[int]]],
    *,
    window: float = math.inf,
    limit: int = MAX_ROW,
    packed: bool = True,
) -> list[LetterRow]:
    """Rows covering every prompt of `groups` (prompt indices run over the groups in order).

    Each group (a question's orders) is packed behind its shared prefix into rows of at most `limit`
    tokens. Plain rows, one per prompt: with `packed=False`, a prompt longer than `window` (see the module
    docstring), and a group with no shared token (an empty prefix would leave the later segments nothing
    that marks them as real for `gates.real_tokens`)."""
    rows: list[LetterRow] = []
    start = 0
    for group in groups:
        fits = [k for k, p in enumerate(group) if packed and len(p) <= window]
        n = shared_prefix_len([group[k] for k in fits]) if len(fits) > 1 else 0
        plain = [k for k in range(len(group)) if n == 0 or k not in fits]
        rows += [(list(group[k]), None, [(start + k, len(group[k]) - 1)]) for k in plain]
        if n:
            prefix = list(group[fits[0]][:n])
            ids, segments, reads, members = list(prefix), [0] * n, [], []
            for k in fits:
                own = list(group[k][n:])
                if reads and len(ids) + len(own) > limit:
                    rows.append(_row(ids, segments, reads, members, group, start))
                    ids, segments, reads, members = list(prefix), [0] * n, [], []
                ids += own
                segments += [len(reads) + 1] * len(own)
                reads.append((start + k, len(ids) - 1))
                members.append(k)
            rows.append(_row(ids, segments, reads, members, group, start))
        start += len(group)
    return rows


def _row(ids, segments, reads, members, group, start) -> LetterRow:
    """A packed row, or the plain prompt when the row holds one."""
    if len(members) == 1:
        p = list(group[members[0]])
        return (p, None, [(start + members[0], len(p) - 1)])
    return (ids, segments, reads)
