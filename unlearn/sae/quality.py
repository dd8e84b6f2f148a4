"""How good an SAE is on held-out text: variance explained, L0, dead latents, and the model's next-token
loss with the SAE spliced in (delta CE), as `unlearn train-sae` reports them."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from unlearn.errors import UnlearnError
from unlearn.hooks import edit, forward_to, text_config
from unlearn.progress import progress_bar
from unlearn.sae.activations import batch_windows, kept, token_windows
from unlearn.sae.model import SAE

# --- evaluation on held-out text ---------------------------------------------------------------------------


LOGITS_BUDGET = 2**28
"""Logit entries (float32: 1 GiB) one CE forward may hold: Gemma 3's 262k vocabulary over a 2048-token window
is 2.1 GiB per row, and a batch of 8 such rows (17 GiB) exhausted 24 GiB."""


def variance_explained(x_ND, x_hat_ND) -> float:
    """Fraction of the activations' variance (about their mean over the batch) the reconstruction keeps:
    `1 - Σ(x̂ - x)² / Σ(x - x̄)²` (one batch; `evaluate_sae` accumulates the same over held-out text)."""
    var = (x_ND - x_ND.mean(0)).pow(2).sum()
    return 1 - (x_hat_ND - x_ND).pow(2).sum().item() / var.item()


def _streamed_fve(sse: float, sum_sq: float, sum_x_D: Tensor, n: int) -> float:
    """`variance_explained` from running sums over n tokens: Σ(x - x̄)² = Σx² - |Σx|² / n."""
    return 1 - sse / (sum_sq - sum_x_D.pow(2).sum().item() / n)


def _next_token_ce(logits_BTV: Tensor, ids_BT: Tensor, sel_BT: Tensor, mask_BT: Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy over positions t with sel[t] whose target t+1 is a real token."""
    sel_BT = sel_BT[:, :-1] & mask_BT[:, 1:].bool()
    logits_NV = logits_BTV[:, :-1][sel_BT].float()
    targets_N = ids_BT[:, 1:][sel_BT]
    return torch.nn.functional.cross_entropy(logits_NV, targets_N, reduction="sum").item(), len(targets_N)


def _ce_three_ways(
    model, sae: SAE, hook: str, inputs: dict, keep_BT: Tensor, sink_ratio: float | None = None
) -> tuple[Tensor, Tensor, dict, int]:
    """One batch through the model clean, with the SAE reconstruction spliced in at the kept positions,
    and with zeros there; returns the clean activations, the kept positions (`keep_BT` less the sink
    tokens, `kept`), the summed CEs and the token count."""
    store: dict[str, Tensor] = {}

    def record(act: Tensor) -> Tensor:
        store["x"], store["keep"] = act, kept(act, keep_BT, sink_ratio)
        return act

    def splice(act: Tensor) -> Tensor:
        return torch.where(store["keep"][..., None], sae(act).to(act.dtype), act)

    def zero(act: Tensor) -> Tensor:
        return act.masked_fill(store["keep"][..., None], 0.0)

    sums, count = {}, 0
    for name, fn in (("clean", record), ("sae", splice), ("zero", zero)):
        with edit(model, hook, fn):
            logits_BTV = model(**inputs, use_cache=False).logits
        sums[name], count = _next_token_ce(
            logits_BTV, inputs["input_ids"], store["keep"], inputs["attention_mask"]
        )
        del logits_BTV
    return store["x"], store["keep"], sums, count


@torch.inference_mode()
def evaluate_sae(
    model: nn.Module,
    tokenizer,
    sae: SAE,
    hook: str,
    texts: Iterable[str],
    *,
    max_length: int = 128,
    batch_size: int = 8,
    ce_tokens: int = 8192,
    max_tokens: int | None = None,
    sink_ratio: float | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Quality of `sae` at `hook` on held-out text, the usual SAE metrics (SAEBench "core"):

    - variance explained `1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²`, mean L0, fraction of latents that never fire;
    - next-token CE of the model clean, with x̂ spliced in at the hook, and with zeros spliced in, on the
      first `ce_tokens` predicted tokens: `delta_ce = ce_sae − ce_clean`, `ce_loss_recovered =
      (ce_zero − ce_sae) / (ce_zero − ce_clean)`.
    BOS and padding are left out everywhere (and left untouched by the splice): the SAE never saw BOS;
    with `sink_ratio`, so are massive-activation tokens (`kept`), as when the SAE was trained that way.
    """
    n_prefix = int(tokenizer.bos_token_id is not None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sse, sum_sq, n, l0_sum = 0.0, 0.0, 0, 0.0
    sum_x_D = torch.zeros(sae.d_in, dtype=torch.float64)
    fired_F = torch.zeros(sae.d_sae, dtype=torch.bool)
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    ce_n = 0
    with progress_bar("evaluate SAE", "info", clock=None, enabled=progress) as bar:
        task = bar.add_task("eval", total=max_tokens, info="")
        for batch in batch_windows(token_windows(tokenizer, texts, max_length), batch_size, pad, n_prefix):
            ids_BT, mask_BT, keep_BT = batch["input_ids"], batch["attention_mask"], batch["keep"]
            inputs = {"input_ids": ids_BT, "attention_mask": mask_BT}
            if ce_n < ce_tokens:  # a few rows per forward: (rows, T, vocab) logits fit in LOGITS_BUDGET
                per = max(1, LOGITS_BUDGET // (ids_BT.shape[1] * text_config(model).vocab_size))
                parts = []
                for r in range(0, len(ids_BT), per):
                    rows = {k: v[r : r + per] for k, v in inputs.items()}
                    acts, keep, sums, count = _ce_three_ways(
                        model, sae, hook, rows, keep_BT[r : r + per], sink_ratio
                    )
                    ce = {k: ce[k] + sums[k] for k in ce}
                    ce_n += count
                    parts.append((acts, keep))
                acts_BTD, keep_BT = (torch.cat(t) for t in zip(*parts, strict=True))
            else:
                acts_BTD = forward_to(model, [hook], **inputs)[hook]
                keep_BT = kept(acts_BTD, keep_BT, sink_ratio)
            x_ND = acts_BTD[keep_BT].to(sae.dtype)
            f_NF = sae.encode(x_ND)
            x_hat_ND = sae.decode(f_NF)
            sse += (x_ND - x_hat_ND).double().pow(2).sum().item()
            sum_sq += x_ND.double().pow(2).sum().item()
            sum_x_D += x_ND.double().sum(0)
            n += len(x_ND)
            l0_sum += (f_NF > 0).sum().item()
            fired_F |= (f_NF > 0).any(0)
            bar.update(
                task,
                completed=n,
                info=f"{n} tokens, FVE {_streamed_fve(sse, sum_sq, sum_x_D, n):.3f}",
            )
            if max_tokens is not None and n >= max_tokens:
                break
    if n == 0:
        raise UnlearnError("no evaluation tokens: the held-out texts are empty")
    out = {
        "tokens": n,
        "variance_explained": _streamed_fve(sse, sum_sq, sum_x_D, n),
        "mse_per_token": sse / n,
        "l0": l0_sum / n,
        "dead_frac": 1 - fired_F.float().mean().item(),
        "dead_count": int((~fired_F).sum()),
        "ce_tokens": ce_n,
    }
    if ce_n:
        clean, spliced, zeroed = (ce[k] / ce_n for k in ("clean", "sae", "zero"))
        out |= {
            "ce_clean": clean,
            "ce_sae": spliced,
            "ce_zero": zeroed,
            "delta_ce": spliced - clean,
            "ce_loss_recovered": (zeroed - spliced) / (zeroed - clean) if zeroed != clean else None,
        }
    return out
