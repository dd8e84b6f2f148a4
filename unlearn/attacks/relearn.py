"""Relearning attack: a few optimizer steps on k texts, with the unlearned state active.

Łucki et al. (arXiv 2409.18025; code `ethz-spylab/unlearning-vs-safety`) recover most RMU-unlearned
capability by fine-tuning on 10 unrelated examples; Deeb & Roger (arXiv 2410.08827) recover 88% by
retraining on accessible facts. Here: full fine-tuning (AdamW, causal-LM loss on non-padding tokens) of
chosen parameters only (no peft), with the caller's unlearned state (hook, gate or swapped weights) active
during training and evaluation. `relearned` restores every trained parameter and `requires_grad` flag.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from unlearn.errors import UnlearnError
from unlearn.hooks import decoder_layers


@dataclass
class RelearnStats:
    """What a relearning run did and cost (filled while the block runs)."""

    params: list[str] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    seed: int = 0
    loss_before: float | None = None
    """Mean per-token loss on the training texts (up to `eval_texts` of them) before the first step, with
    the unlearned state active: the start of the loss curve on fixed data."""
    loss_after: float | None = None
    """The same loss after the last step: below `loss_before` when relearning fitted the texts."""


def trainable_names(
    model: nn.Module, layers: Sequence[int], modules: Sequence[str] = ("mlp", "self_attn")
) -> list[str]:
    """Names of the weight matrices of `layers` whose path within the layer starts with one of `modules`
    (default: all MLP and attention matrices of those layers; norms and embeddings stay fixed)."""
    stack = decoder_layers(model)
    by_id = {id(p): n for n, p in model.named_parameters()}
    names = []
    for i in layers:
        if not 0 <= i < len(stack):
            raise UnlearnError(
                f"Relearning layer {i} is out of range: the model has layers 0..{len(stack) - 1}."
            )
        for sub, p in stack[i].named_parameters():
            if p.ndim == 2 and any(sub == m or sub.startswith(m + ".") for m in modules):
                names.append(by_id[id(p)])
    if not names:
        raise UnlearnError(
            f"No weight matrices under {list(modules)} in layers {list(layers)}; pass e.g. mlp,self_attn."
        )
    return names


def relearn_texts(source: str, k: int) -> list[str]:
    """The first `k` texts of a source; `qa:<question source>` gives solved questions in the cloze layout
    (`Question: …\nAnswer: <answer>`), the "accessible facts" of Deeb & Roger (arXiv 2410.08827)."""
    from unlearn.data import iter_texts, load_questions
    from unlearn.eval.prompts import cloze_context, cloze_continuation

    if source.startswith("qa:"):
        qs = load_questions(source.removeprefix("qa:"), limit=k)
        return [cloze_context(q.question) + cloze_continuation(q.choices[q.answer]) for q in qs]
    return list(iter_texts(source, limit_docs=k))


def text_loss(
    model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 8, max_length: int = 64
) -> float:
    """Mean causal-LM loss per predicted token over `texts` (padding excluded), no gradient, eval mode."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt", padding=True,
                            truncation=True, max_length=max_length)  # fmt: skip
            ids_BT, mask_BT = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            with torch.inference_mode():
                logits_BTV = model(input_ids=ids_BT, attention_mask=mask_BT, use_cache=False).logits
            logp_BTV = torch.log_softmax(logits_BTV[:, :-1].float(), dim=-1)
            nll_BT = -logp_BTV.gather(-1, ids_BT[:, 1:, None])[..., 0]
            real_BT = mask_BT[:, 1:].bool() & mask_BT[:, :-1].bool()
            total += float(nll_BT[real_BT].sum())
            count += int(real_BT.sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


def _batches(tokenizer, texts: Sequence[str], batch_size: int, max_length: int, steps: int, seed: int):
    """`steps` batches cycling through the texts in a seeded shuffled order (k < batch_size repeats)."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    for step in range(steps):
        pick = [
            texts[order[(step * batch_size + j) % len(order)]] for j in range(min(batch_size, len(order)))
        ]
        yield tokenizer(pick, return_tensors="pt", padding=True, truncation=True, max_length=max_length)


@contextmanager
def relearned(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    params: Sequence[str],
    steps: int = 20,
    lr: float = 1e-4,
    batch_size: int = 4,
    max_length: int = 64,
    seed: int = 0,
    eval_texts: int | None = 32,
) -> Iterator[RelearnStats]:
    """Fine-tune `params` for `steps` AdamW steps on `texts`, yield the stats, restore on exit.

    Call inside the unlearned state so the hook (and gate) act during training; evaluate inside the block.
    The loss on the first `eval_texts` texts (fixed data, eval mode) is measured before and after
    training (`loss_before`, `loss_after`); `eval_texts=0` skips it.
    """
    if not texts:
        raise UnlearnError(
            "Relearning needs at least one text; pass a non-empty --relearn-forget/--relearn-retain source."
        )
    named = dict(model.named_parameters())
    missing = [n for n in params if n not in named]
    if missing:
        raise UnlearnError(f"Unknown parameters to relearn: {missing[:3]}.")
    saved = {n: named[n].detach().clone() for n in params}
    flags = {n: p.requires_grad for n, p in named.items()}
    was_training = model.training
    stats = RelearnStats(params=list(params), seed=seed)
    device = next(model.parameters()).device
    try:
        probe = list(texts[:eval_texts]) if eval_texts is None or eval_texts > 0 else []
        if probe:
            stats.loss_before = text_loss(model, tokenizer, probe, max_length=max_length)
        for n, p in named.items():
            p.requires_grad_(n in saved)
        opt = torch.optim.AdamW([named[n] for n in params], lr=lr, weight_decay=0.0)
        torch.manual_seed(seed)
        model.train()
        start = time.perf_counter()
        for batch in _batches(tokenizer, texts, batch_size, max_length, steps, seed):
            ids_BT = batch["input_ids"].to(device)
            mask_BT = batch["attention_mask"].to(device)
            labels_BT = ids_BT.masked_fill(mask_BT == 0, -100)
            with torch.enable_grad():
                loss = model(input_ids=ids_BT, attention_mask=mask_BT, labels=labels_BT, use_cache=False).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            stats.losses.append(float(loss.detach()))
            stats.steps += 1
            stats.tokens += int(mask_BT.sum())
        stats.seconds = time.perf_counter() - start
        model.train(was_training)
        for p in named.values():
            p.grad = None
        del opt
        if probe:
            stats.loss_after = text_loss(model, tokenizer, probe, max_length=max_length)
        yield stats
    finally:
        model.train(was_training)
        with torch.no_grad():
            for n, w in saved.items():
                named[n].copy_(w)
                named[n].grad = None
        for n, p in named.items():
            p.requires_grad_(flags[n])
