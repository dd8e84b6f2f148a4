"""Activations at one hook point, streamed from text corpora: the training data of `unlearn train-sae`.

Documents are joined into full BOS-led token windows, run through a forward that stops at the hook's
layer, and stored as float16 — in memory, or in a memory-mapped cache that an interrupted run resumes.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from unlearn.batches import bos_prefix, right_padded
from unlearn.hooks import forward_to, hook_width
from unlearn.progress import progress_bar
from unlearn.results import read_json, write_json

log = logging.getLogger(__name__)


# --- activations from a language model -------------------------------------------------------------------


def mixed_texts(sources: Sequence[str], *, limit_docs: int | None = None) -> Iterator[str]:
    """Documents of several sources interleaved one by one (a 50/50 mix for two sources); when one runs
    out the others continue. Deterministic, so an activation cache can resume where it stopped."""
    from unlearn.data import iter_texts

    iters = [iter_texts(s, limit_docs=limit_docs) for s in sources]
    while iters:
        for it in list(iters):
            text = next(it, None)
            if text is None:
                iters.remove(it)
            elif text.strip():
                yield text


def token_windows(
    tokenizer, texts: Iterable[str], max_length: int, min_tokens: int = 8
) -> Iterator[list[int]]:
    """Documents joined by blank lines into one token stream, cut into windows of `max_length` tokens,
    each starting with BOS (Gemma is very sensitive to a missing BOS; lm-eval's `add_bos_token`). Full windows need no
    padding: cutting each ~150-token document on its own wasted about half of every forward."""
    bos = bos_prefix(tokenizer)
    body = max_length - len(bos)
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"]
        while len(stream) >= body:
            yield bos + stream[:body]
            stream = stream[body:]
    if len(stream) >= min_tokens:
        yield bos + stream


def batch_windows(
    windows: Iterable[list[int]], batch_size: int, pad_id: int, n_prefix: int
) -> Iterator[dict]:
    """Right-padded batches: `input_ids`, `attention_mask` (B, T) and `keep` (B, T), the positions whose
    activations count — real tokens after the BOS prefix (BOS has a huge norm and no content)."""
    batch: list[list[int]] = []
    for window in itertools.chain(windows, [None]):
        if window is not None:
            batch.append(window)
        if batch and (window is None or len(batch) == batch_size):
            ids_BT, mask_BT = right_padded(batch, pad_id)
            keep_BT = mask_BT.bool()
            keep_BT[:, :n_prefix] = False
            yield {"input_ids": ids_BT, "attention_mask": mask_BT, "keep": keep_BT, "n_windows": len(batch)}
            batch = []


def kept(acts_BTD: Tensor, keep_BT: Tensor, sink_ratio: float | None) -> Tensor:
    """`keep_BT` less the massive-activation tokens (`gates.sink_tokens`: residual norm above `sink_ratio` x
    the window's median kept norm), which an SAE, like a gate, then treats as it treats BOS; None keeps all."""
    if sink_ratio is None:
        return keep_BT
    from unlearn.clamp.gates import sink_tokens

    return keep_BT & ~sink_tokens(acts_BTD.detach().double().norm(dim=-1), keep_BT, sink_ratio)


def collect_activations(
    model: nn.Module,
    tokenizer,
    hook: str,
    texts: Iterable[str],
    *,
    n_tokens: int,
    max_length: int = 128,
    batch_size: int = 16,
    cache: Path | None = None,
    cache_key: dict | None = None,
    sink_ratio: float | None = None,
    progress: bool = True,
) -> Tensor:
    """Activations (N ≤ n_tokens, d) at `hook` in float16, from forwards that stop at the hook's layer.

    With `cache`, they go to a float16 memory-mapped file (outside the repo) with a JSON sidecar; a run
    with the same `cache_key` reuses it, and resumes an interrupted collection where it stopped.
    """
    d = hook_width(model, hook)
    meta_path = cache.with_suffix(".json") if cache else None
    meta = {"key": cache_key or {}, "d": d, "capacity": n_tokens, "filled": 0, "windows": 0}
    if cache and meta_path.exists():
        old = read_json(meta_path)
        if old["key"] == meta["key"] and old["d"] == d and old["capacity"] >= n_tokens and cache.exists():
            meta = old
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        mode = "r+" if meta["filled"] else "w+"
        mm = np.memmap(cache, np.float16, mode, shape=(meta["capacity"], d))
        buf = torch.from_numpy(mm)
    else:
        mm, buf = None, torch.empty(n_tokens, d, dtype=torch.float16)
    filled, done = meta["filled"], meta["windows"]
    if filled >= n_tokens:
        return buf[:n_tokens]

    n_prefix = int(tokenizer.bos_token_id is not None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    windows = itertools.islice(token_windows(tokenizer, texts, max_length), done, None)
    t0, start = time.perf_counter(), filled
    with progress_bar("activations", "rate", enabled=progress) as bar, torch.inference_mode():
        task = bar.add_task("acts", total=n_tokens, completed=filled, rate="")
        for i, batch in enumerate(batch_windows(windows, batch_size, pad, n_prefix)):
            acts_BTD = forward_to(
                model, [hook], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            )[hook]
            rows_ND = acts_BTD[kept(acts_BTD, batch["keep"], sink_ratio)].float()[: n_tokens - filled]
            buf[filled : filled + len(rows_ND)] = rows_ND.clamp(-65504, 65504).half()
            filled += len(rows_ND)
            done += batch["n_windows"]
            rate = (filled - start) / (time.perf_counter() - t0)
            bar.update(task, completed=filled, rate=f"{rate:.0f} tok/s")
            if cache and (i % 20 == 19 or filled >= n_tokens):
                mm.flush()
                write_json(meta_path, {**meta, "filled": filled, "windows": done})
            if filled >= n_tokens:
                break
    if cache:
        write_json(meta_path, {**meta, "filled": filled, "windows": done})
    if filled < n_tokens:
        log.warning("the corpus ran out after %d of %d tokens", filled, n_tokens)
    return buf[:filled]
