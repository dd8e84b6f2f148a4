"""Per-feature activation statistics of an SAE on streamed text — what `select-features` ranks by.

Text is cut into BOS-led token chunks, run through the model only up to the SAE's hook point
(`hooks.forward_to`), encoded, and reduced at once into float64 per-feature counters (`FeatureStats`), so
no activation is stored. BOS and padding positions are excluded: BOS residuals are outliers that many
features fire on, and padding is not text. `top_contexts` is the second, cheap pass that records each
selected feature's top-activating text windows.

Each pass (`accumulate`, `top_contexts`, `summed_acts`) is cached under `cache_dir()/feature-stats`, keyed
by everything it depends on (`pass_key`: weights, SAE, hook, the exact token ids and batching), as the
known subsets are: every selection on one model repeats these passes on the same text, and a hit returns
the stored result, equal bit for bit to recomputing it (float64 and exact JSON round trips).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor, nn

from unlearn.batches import bos_prefix, right_padded
from unlearn.distributed import Shard
from unlearn.hooks import forward_to
from unlearn.results import cached_json, write_bytes

log = logging.getLogger(__name__)


@dataclass
class FeatureStats:
    """Per-feature counters over the counted tokens of one text source (float64, on the model device)."""

    n_tokens: int
    """Tokens counted (BOS and padding excluded)."""
    fire_count_F: Tensor
    """How many counted tokens each feature fired on (f > 0)."""
    act_sum_F: Tensor
    """Sum of each feature's activation over counted tokens."""

    @classmethod
    def empty(cls, d_sae: int, device: torch.device | str | None = None) -> FeatureStats:
        zeros = torch.zeros(d_sae, dtype=torch.float64, device=device)
        return cls(0, zeros, zeros.clone())

    def update(self, f_NF: Tensor) -> None:
        """Add the activations of N counted tokens."""
        self.n_tokens += f_NF.shape[0]
        self.fire_count_F += (f_NF > 0).sum(0, dtype=torch.float64)
        self.act_sum_F += f_NF.sum(0, dtype=torch.float64)

    @property
    def freq_F(self) -> Tensor:
        return self.fire_count_F / max(self.n_tokens, 1)

    @property
    def mean_act_F(self) -> Tensor:
        """Mean activation over the tokens where the feature fires (0 where it never does)."""
        return self.act_sum_F / self.fire_count_F.clamp(min=1)


TOKEN_COUNTS_KEY = "n_tokens"
"""One metadata key holding every counter's token count as sorted JSON: safetensors 0.8 writes metadata
from a hash map, in an order that changes from process to process, so one key per name made the file's
bytes differ between identical runs."""


def save_counters(path: Path, counters: dict[str, FeatureStats]) -> None:
    """Counters by name (retain, or a topic) as safetensors: float64 tensors, token counts in the metadata."""
    tensors = {}
    for name, s in counters.items():
        tensors[f"{name}/fire_count"] = s.fire_count_F.detach().cpu().contiguous()
        tensors[f"{name}/act_sum"] = s.act_sum_F.detach().cpu().contiguous()
    counts = json.dumps({name: s.n_tokens for name, s in counters.items()}, sort_keys=True)
    write_bytes(path, save(tensors, metadata={TOKEN_COUNTS_KEY: counts}))


def load_counters(path: Path, device: torch.device | str | None = None) -> dict[str, FeatureStats]:
    with safe_open(str(path), "pt", device="cpu") as f:
        meta = f.metadata() or {}
        counts = (
            json.loads(meta[TOKEN_COUNTS_KEY]) if TOKEN_COUNTS_KEY in meta else meta
        )  # (older: a key each)
        return {
            name: FeatureStats(
                int(n),
                f.get_tensor(f"{name}/fire_count").to(device),
                f.get_tensor(f"{name}/act_sum").to(device),
            )
            for name, n in sorted(counts.items())
        }


# --- token streams -----------------------------------------------------------------------------------


def token_chunks(
    texts: Iterable[str], tokenizer, *, max_length: int = 128, max_tokens: int | None = None
) -> Iterator[list[int]]:
    """Token id chunks of at most `max_length`, each starting with BOS (when the tokenizer has one), cut
    from consecutive windows of every text; stops after `max_tokens` counted (non-BOS) tokens."""
    bos = bos_prefix(tokenizer)
    body = max_length - len(bos)
    left = max_tokens if max_tokens is not None else float("inf")
    group: list[str] = []

    def flush() -> Iterator[list[int]]:
        nonlocal left
        for ids in tokenizer(group, add_special_tokens=False)["input_ids"]:
            for start in range(0, len(ids), body):
                piece = ids[start : start + body][: int(min(body, left))]
                if not piece:
                    return
                left -= len(piece)
                yield bos + piece
                if left <= 0:
                    return

    for text in texts:
        if text and text.strip():
            group.append(text)
        if len(group) == 64:
            yield from flush()
            group = []
            if left <= 0:
                return
    if group and left > 0:
        yield from flush()


def batches(
    chunks: list[list[int]], pad_id: int, batch_tokens: int
) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """(chunk indices, input_ids, attention_mask), right-padded, about `batch_tokens` slots each; chunks
    go longest first so that padding stays small."""
    order = sorted(range(len(chunks)), key=lambda i: -len(chunks[i]))
    start = 0
    while start < len(order):
        width = len(chunks[order[start]])
        size = max(1, batch_tokens // max(width, 1))
        idx = order[start : start + size]
        start += size
        yield idx, *right_padded([chunks[i] for i in idx], pad_id)


def _counted_acts(
    model: nn.Module, hook: str, ids_BT: Tensor, mask_BT: Tensor, bos: int | None
) -> tuple[Tensor, Tensor]:
    """Hook activations of counted tokens (N, d_in) and the mask (B, T) that picked them."""
    device = next(model.parameters()).device
    ids_BT, mask_BT = ids_BT.to(device), mask_BT.to(device)
    x_BTD = forward_to(model, [hook], input_ids=ids_BT, attention_mask=mask_BT)[hook]
    keep_BT = mask_BT.bool() if bos is None else mask_BT.bool() & (ids_BT != bos)
    return x_BTD[keep_BT], keep_BT


STATS_VERSION = 1
"""Bump when what a pass computes changes (the counted-token rule, the context window text), so cached
entries are recomputed."""


def pass_key(
    name: str, model: nn.Module, sae: nn.Module, hook: str, chunks: list[list[int]], **settings
) -> dict:
    """What the pass `name` over `chunks` depends on: model and SAE weights (fingerprints, classes, the
    SAE's config), dtype, device and attention implementation (`known.numerics`: they set the rounding),
    the hook, the exact token ids and the pass's settings (batching sets the padding, which also sets the
    rounding)."""
    from unlearn.eval.known import numerics, weight_fingerprint

    digest = hashlib.sha256(np.asarray([len(c) for c in chunks], dtype=np.int64).tobytes())
    digest.update(np.fromiter((t for c in chunks for t in c), dtype=np.int64).tobytes())
    return {
        "pass": name, "version": STATS_VERSION, "model": weight_fingerprint(model),
        "model_class": type(model).__name__, **numerics(model),
        "sae": weight_fingerprint(sae), "sae_cfg": sae.cfg_dict() if hasattr(sae, "cfg_dict") else type(sae).__name__,
        "hook": hook, "chunks": digest.hexdigest()[:24], **settings,
    }  # fmt: skip


@torch.inference_mode()
def accumulate(
    model: nn.Module,
    sae: nn.Module,
    hook: str,
    chunks: list[list[int]],
    *,
    pad_id: int,
    bos_id: int | None,
    batch_tokens: int = 2048,
    bar: Progress | None = None,
    desc: str = "stats",
) -> FeatureStats:
    """FeatureStats of `chunks` at `hook`: forward to the hook only, encode, reduce; no activation stored
    (the counters are, keyed by `pass_key`)."""
    key = pass_key(
        "counters", model, sae, hook, chunks, pad_id=pad_id, bos_id=bos_id, batch_tokens=batch_tokens
    )
    computed = []

    def compute() -> dict:
        computed.append(True)
        return _counters_json(_accumulate(model, sae, hook, chunks, pad_id=pad_id, bos_id=bos_id,
                                          batch_tokens=batch_tokens, bar=bar, desc=desc))  # fmt: skip

    got = cached_json("feature-stats", key, compute)
    if not computed:
        log.info(
            "%s: counters of %d tokens from the cache (same weights, SAE and token ids)",
            desc,
            got["n_tokens"],
        )
    device = sae.W_enc.device
    return FeatureStats(int(got["n_tokens"]), *(torch.tensor(got[k], dtype=torch.float64, device=device)
                                                for k in ("fire_count", "act_sum")))  # fmt: skip


def _counters_json(stats: FeatureStats) -> dict:
    return {"n_tokens": int(stats.n_tokens), "fire_count": stats.fire_count_F.cpu().tolist(),
            "act_sum": stats.act_sum_F.cpu().tolist()}  # fmt: skip


def _accumulate(model, sae, hook, chunks, *, pad_id, bos_id, batch_tokens, bar, desc) -> FeatureStats:
    stats = FeatureStats.empty(sae.d_sae, sae.W_enc.device)
    task = bar.add_task(desc, total=sum(len(c) for c in chunks)) if bar else None
    shard = Shard(force=True)  # under `accelerate launch`: this rank's batches, counters summed over ranks
    for _, ids_BT, mask_BT in batches(chunks, pad_id, batch_tokens):
        if shard.take():
            x_ND, _ = _counted_acts(model, hook, ids_BT, mask_BT, bos_id)
            stats.update(sae.encode(x_ND))
        if bar is not None:
            bar.advance(task, int(mask_BT.sum()))
    n, fires, acts = shard.sum([stats.n_tokens, stats.fire_count_F, stats.act_sum_F])
    return FeatureStats(n, fires, acts)


@torch.inference_mode()
def top_contexts(
    model: nn.Module,
    sae: nn.Module,
    hook: str,
    chunks: list[list[int]],
    feature_ids: list[int],
    tokenizer,
    *,
    k: int = 8,
    window: tuple[int, int] = (12, 4),
    batch_tokens: int = 2048,
    bar: Progress | None = None,
) -> dict[int, dict[str, list]]:
    """For each feature: `contexts` (its k highest activations as text windows with the token marked
    «like this», with activation and chunk/position) and `top_tokens` (the tokens it fires on most).
    Cached by `pass_key` (with the tokenizer, which writes the text)."""
    settings = dict(k=k, window=window, batch_tokens=batch_tokens)
    key = pass_key("contexts", model, sae, hook, chunks, features=[int(i) for i in feature_ids], **settings,
                   tokenizer=[type(tokenizer).__name__, tokenizer.name_or_path, len(tokenizer)])  # fmt: skip
    got = cached_json("feature-stats", key, lambda: {
        str(f): v for f, v in _top_contexts(model, sae, hook, chunks, feature_ids, tokenizer, bar=bar, **settings).items()
    })  # fmt: skip
    return {int(f): v for f, v in got.items()}


def _top_contexts(model, sae, hook, chunks, feature_ids, tokenizer, *, k, window, batch_tokens, bar) -> dict:
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    heaps: list[list[tuple[float, int, int]]] = [[] for _ in feature_ids]  # min-heaps of (act, chunk, pos)
    counts: list[Counter] = [Counter() for _ in feature_ids]
    task = bar.add_task("contexts", total=sum(len(c) for c in chunks)) if bar else None
    for idx, ids_BT, mask_BT in batches(chunks, pad if pad is not None else 0, batch_tokens):
        x_ND, keep_BT = _counted_acts(model, hook, ids_BT, mask_BT, bos)
        f_NK = sae.encode_subset(x_ND, feature_ids).float().cpu()
        where_N2 = keep_BT.nonzero().cpu()  # (row, pos) of each counted token
        tok_N = ids_BT[where_N2[:, 0], where_N2[:, 1]]
        for j in range(len(feature_ids)):
            fired = torch.nonzero(f_NK[:, j] > 0).flatten()
            if not len(fired):
                continue
            counts[j].update(tok_N[fired].tolist())
            best = fired[f_NK[fired, j].topk(min(k, len(fired))).indices]
            for n in best.tolist():
                item = (float(f_NK[n, j]), idx[int(where_N2[n, 0])], int(where_N2[n, 1]))
                (heapq.heappush if len(heaps[j]) < k else heapq.heappushpop)(heaps[j], item)
        if bar is not None:
            bar.advance(task, int(mask_BT.sum()))
    out = {}
    for j, feat in enumerate(feature_ids):
        contexts = [
            {
                "act": round(act, 4),
                "chunk": c,
                "pos": p,
                "text": _context_text(tokenizer, chunks[c], p, window),
            }
            for act, c, p in sorted(heaps[j], reverse=True)
        ]
        top = [tokenizer.decode([t]) for t, _ in counts[j].most_common(5)]
        out[feat] = {"top_tokens": top, "contexts": contexts}
    return out


def _context_text(tokenizer, ids: list[int], pos: int, window: tuple[int, int]) -> str:
    before = tokenizer.decode(ids[max(0, pos - window[0]) : pos], skip_special_tokens=True)
    token = tokenizer.decode([ids[pos]])
    after = tokenizer.decode(ids[pos + 1 : pos + 1 + window[1]], skip_special_tokens=True)
    return f"{before}«{token}»{after}".replace("\n", "⏎")


@torch.inference_mode()
def summed_acts(
    model: nn.Module,
    sae: nn.Module,
    hook: str,
    chunks: list[list[int]],
    feature_ids: list[int],
    *,
    pad_id: int,
    bos_id: int | None,
    batch_tokens: int = 2048,
) -> Tensor:
    """Per chunk, each feature's activation summed over its counted tokens (BOS and padding excluded):
    float64, shape (len(chunks), len(feature_ids)), rows in the order of `chunks`. Cached by `pass_key`."""
    ids = [int(i) for i in feature_ids]
    key = pass_key("summed", model, sae, hook, chunks, features=ids, pad_id=pad_id, bos_id=bos_id,
                   batch_tokens=batch_tokens)  # fmt: skip
    got = cached_json("feature-stats", key, lambda: _summed_acts(model, sae, hook, chunks, ids, pad_id=pad_id,
                                                                  bos_id=bos_id, batch_tokens=batch_tokens).tolist())  # fmt: skip
    return torch.tensor(got, dtype=torch.float64).reshape(len(chunks), len(ids))


def _summed_acts(model, sae, hook, chunks, feature_ids, *, pad_id, bos_id, batch_tokens) -> Tensor:
    out_CK = torch.zeros(len(chunks), len(feature_ids), dtype=torch.float64)
    filled_CK = torch.zeros(out_CK.shape, dtype=torch.bool)
    shard = Shard(force=True)  # under `accelerate launch`: this rank's batches, rows gathered below
    device = next(model.parameters()).device
    for idx, ids_BT, mask_BT in batches(chunks, pad_id, batch_tokens):
        if not shard.take():
            continue
        filled_CK[torch.as_tensor(idx)] = True
        ids_BT, mask_BT = ids_BT.to(device), mask_BT.to(device)
        x_BTD = forward_to(model, [hook], input_ids=ids_BT, attention_mask=mask_BT)[hook]
        keep_BT = mask_BT.bool() if bos_id is None else mask_BT.bool() & (ids_BT != bos_id)
        f_BTK = sae.encode_subset(x_BTD, feature_ids).double() * keep_BT.unsqueeze(-1)
        out_CK[torch.as_tensor(idx)] = f_BTK.sum(1).cpu()
    return shard.merge(out_CK, filled_CK)
