"""Train a sparse autoencoder on a model's activations (`unlearn train-sae`).

Two architectures, both saved as plain `unlearn.saes.SAE` folders (SAELens format):
- `jumprelu` (Rajamanoharan et al. 2024, arXiv 2407.14435; the Gemma Scope recipe, arXiv 2408.05147):
  `f = pre · H(pre − θ)`, loss `‖x − x̂‖² + λ·L0`. H has no useful derivative, so θ learns through
  straight-through estimators with a rectangle kernel of bandwidth ε (`JumpReLUFn`, `StepFn`).
- `topk` (Gao et al. 2024, arXiv 2406.04093): keep the k largest of `relu(pre)`; MSE plus AuxK, which
  teaches dead latents to model the residual.

Inputs are scaled to unit mean squared norm during training (2407.14435 §5; centred first, see
`train_sae`) so that ε, the threshold
init and λ transfer between models; the scale is folded back into the saved weights, so the saved SAE
reads raw activations. Decoder rows are kept at unit norm (as SAEBench/dictionary_learning do).

Sections: straight-through estimators; the trainable SAE and its loop (`train_sae`, usable on any
activation tensor); activation collection and evaluation on a language model (`collect_activations`,
`evaluate_sae`); the run (`TrainSAEConfig`, `run_train_sae`) and its CLI command (`train_sae_command`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from torch import Tensor, nn

from unlearn.errors import UnlearnError
from unlearn.hooks import edit, forward_to, hook_width
from unlearn.models import load_model
from unlearn.presets import DEFAULT_PRESET
from unlearn.results import new_run_dir, read_json, write_json, write_table
from unlearn.saes import SAE, load_sae

log = logging.getLogger(__name__)


# --- straight-through estimators (2407.14435, eqs. 11-12) -------------------------------------------------


def rectangle(u: Tensor) -> Tensor:
    """Rectangle kernel K(u) = 1 on (−½, ½): the density estimator behind the pseudo-derivatives."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Reduce a broadcast gradient (..., F) back to the threshold's shape (F,)."""
    return grad.reshape(-1, grad.shape[-1]).sum(0).reshape(shape)


class JumpReLUFn(torch.autograd.Function):
    """`pre · H(pre − θ)`; ∂/∂pre = H(pre − θ), pseudo-derivative ∂/∂θ = −(θ/ε)·K((pre − θ)/ε)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad_out * (pre > threshold).to(pre.dtype)
        grad_theta = -(threshold / eps) * rectangle((pre - threshold) / eps) * grad_out
        return grad_pre, _sum_to(grad_theta, threshold.shape), None


class StepFn(torch.autograd.Function):
    """`H(pre − θ)` (the L0 count); no gradient to pre, pseudo-derivative ∂/∂θ = −(1/ε)·K((pre − θ)/ε)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = -(1.0 / eps) * rectangle((pre - threshold) / eps) * grad_out
        return torch.zeros_like(pre), _sum_to(grad_theta, threshold.shape), None


# --- the trainable SAE --------------------------------------------------------------------------------------


@dataclass
class SAETrainConfig:
    """Hyper-parameters of the optimisation itself (what `train_sae` needs besides the activations)."""

    architecture: str = "jumprelu"
    """`jumprelu` (L0 penalty with straight-through estimators) or `topk`."""
    width: int = 2048
    """Number of latents (d_sae)."""
    l0_coeff: float = 2e-3
    """λ of the L0 penalty (jumprelu), on activations scaled to unit mean squared norm."""
    target_l0: float | None = None
    """If set (jumprelu), the penalty is λ·(L0/target − 1)² instead of λ·L0: steers to a chosen L0
    (SAEBench / dictionary_learning variant), handy for short runs."""
    preact_coeff: float = 0.0
    """jumprelu: weight of the pre-activation loss Σ relu(θ − pre)·‖W_dec‖ (Conerly et al. 2025, Anthropic
    circuits update, Jan 2025), which gives latents below threshold a gradient and so revives dead ones."""
    k: int = 32
    """Active latents per token (topk)."""
    aux_k: int | None = None
    """Latents used by AuxK to model the residual (topk); default d_in // 2 (Gao et al.)."""
    aux_coeff: float = 1 / 32
    """Weight of the AuxK loss (Gao et al.: 1/32)."""
    lr: float = 2e-3
    """Adam learning rate (Gemma Scope uses 7e-5 over billions of tokens; short CPU runs need ~1e-3)."""
    batch_size: int = 2048
    """Tokens per optimiser step."""
    epochs: float = 2.0
    """Passes over the activation buffer (fractions allowed)."""
    bandwidth: float = 1e-3
    """ε of the rectangle kernel (Gemma Scope: 0.001)."""
    threshold_init: float = 1e-3
    """Initial JumpReLU threshold θ (Gemma Scope: 0.001)."""
    threshold_lr_mult: float = 10.0
    """The log-threshold's lr relative to `lr`: θ must climb ~2 orders of magnitude from its init, which
    at Adam's ~lr-sized steps takes thousands of steps; a short run needs it faster."""
    l0_warmup: float = 0.1
    """Fraction of steps over which λ ramps up linearly from 0 (Gemma Scope warms λ up too)."""
    lr_warmup: float = 0.02
    """Fraction of steps of linear lr warmup; the lr then decays (cosine) to 10%."""
    dead_tokens: int = 200_000
    """A latent that has not fired on this many consecutive training tokens counts as dead."""
    seed: int = 0
    """Seed of the initialisation and the shuffling."""
    log_every: int = 20
    """Record a row of the loss curve every this many steps."""


class TrainableSAE(nn.Module):
    """Training-time SAE on scaled activations; `to_sae(scale)` gives the inference `SAE` on raw ones."""

    def __init__(self, d_in: int, cfg: SAETrainConfig, *, init_bias_DN: Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        W_dec_FD = torch.randn(cfg.width, d_in, generator=gen)
        W_dec_FD /= W_dec_FD.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec_FD)
        # Encoder = decoder transpose (Conerly et al. 2024 / Gao et al.): each latent starts as a detector
        # of its own direction, which avoids most dead latents at the start.
        self.W_enc = nn.Parameter(W_dec_FD.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(cfg.width))
        self.b_dec = nn.Parameter(torch.zeros(d_in) if init_bias_DN is None else init_bias_DN.clone().float())
        if cfg.architecture == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((cfg.width,), math.log(cfg.threshold_init)))

    def forward(self, x_ND: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x̂, f, L0 per row with the STE attached, pre-activations)."""
        pre_NF = x_ND @ self.W_enc + self.b_enc
        if self.cfg.architecture == "jumprelu":
            theta_F = self.log_threshold.exp()
            f_NF = JumpReLUFn.apply(pre_NF, theta_F, self.cfg.bandwidth)
            l0_N = StepFn.apply(pre_NF, theta_F, self.cfg.bandwidth).sum(-1)
        else:
            vals_NK, idx_NK = pre_NF.topk(self.cfg.k, dim=-1, sorted=False)
            f_NF = torch.zeros_like(pre_NF).scatter(-1, idx_NK, vals_NK.relu())
            l0_N = (f_NF > 0).sum(-1).to(pre_NF.dtype)
        return f_NF @ self.W_dec + self.b_dec, f_NF, l0_N, pre_NF

    def aux_loss(self, x_ND: Tensor, x_hat_ND: Tensor, pre_NF: Tensor, dead_F: Tensor) -> Tensor:
        """AuxK (Gao et al. §A.2): the top-k_aux dead latents reconstruct the residual x − x̂, normalised by
        the residual's variance so the term is scale free."""
        n_dead = int(dead_F.sum())
        if n_dead == 0:
            return pre_NF.new_zeros(())
        k_aux = min(self.cfg.aux_k or x_ND.shape[-1] // 2, n_dead)
        residual_ND = (x_ND - x_hat_ND).detach()
        pre_dead_NF = pre_NF.masked_fill(~dead_F, -torch.inf)
        vals_NK, idx_NK = pre_dead_NF.topk(k_aux, dim=-1, sorted=False)
        f_aux_NF = torch.zeros_like(pre_NF).scatter(-1, idx_NK, vals_NK.relu())
        err_ND = f_aux_NF @ self.W_dec - residual_ND
        denom = (residual_ND - residual_ND.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
        return err_ND.pow(2).sum(-1).mean() / denom

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the part of W_dec's gradient along each row, which the unit-norm projection would undo."""
        if self.W_dec.grad is not None:
            W_FD = self.W_dec
            self.W_dec.grad -= (self.W_dec.grad * W_FD).sum(-1, keepdim=True) * W_FD

    @torch.no_grad()
    def to_sae(
        self, scale: float, *, hook_name: str | None = None, dtype: torch.dtype = torch.float32
    ) -> SAE:
        """Fold the input scale s back in: x' = x/s, so W_enc/s reads raw x; x̂ = s·x̂' scales the decoder."""
        arch = self.cfg.architecture
        sae = SAE(
            self.W_enc.shape[0],
            self.cfg.width,
            arch,
            k=self.cfg.k if arch == "topk" else None,  # type: ignore[arg-type]
            apply_b_dec_to_input=False,
            hook_name=hook_name,
            dtype=torch.float64,
        )
        sae.W_enc.copy_(self.W_enc.double() / scale)
        sae.b_enc.copy_(self.b_enc.double())
        sae.W_dec.copy_(self.W_dec.double() * scale)
        sae.b_dec.copy_(self.b_dec.double() * scale)
        if arch == "jumprelu":
            sae.threshold.copy_(self.log_threshold.double().exp())
        return sae.to(dtype)


def _schedule(step: int, total: int, warmup: float) -> float:
    """Linear warmup then cosine decay to 10% of the peak."""
    warm = max(1, int(total * warmup))
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


def check_train_config(cfg: SAETrainConfig, d_in: int) -> None:
    """User-fixable mistakes, caught before minutes of activation collection."""
    if cfg.architecture not in ("jumprelu", "topk"):
        raise UnlearnError(f"--architecture must be jumprelu or topk, got {cfg.architecture!r}")
    if cfg.width <= 0:
        raise UnlearnError(f"--width must be positive, got {cfg.width}")
    if cfg.architecture == "topk" and not 0 < cfg.k <= cfg.width:
        raise UnlearnError(f"--k must be in 1..width ({cfg.width}), got {cfg.k}")
    if cfg.lr <= 0 or cfg.batch_size <= 0 or cfg.epochs <= 0:
        raise UnlearnError("--lr, --batch-size and --epochs must be positive")
    if cfg.target_l0 is not None and cfg.target_l0 <= 0:
        raise UnlearnError(f"--target-l0 must be positive, got {cfg.target_l0}")
    if d_in <= 0:
        raise UnlearnError("no activations to train on")


@dataclass
class TrainResult:
    sae: TrainableSAE
    scale: float
    """Input scale s (root mean squared norm of the centred activations); saved weights have it folded in."""
    history: list[dict]
    """Loss-curve rows (step, tokens, lr, l0_coeff, loss, mse, l0, var_explained, dead_frac, aux)."""
    dead_frac: float
    """Latents that did not fire on the last `dead_tokens` training tokens (at most the run's second half)."""
    steps: int
    tokens: int


def train_sae(acts_ND: Tensor, cfg: SAETrainConfig, *, progress: bool = True) -> TrainResult:
    """Train on a fixed activation buffer (N, d_in) of any float dtype, reshuffled every epoch.

    The buffer can be a memory-mapped tensor: only one minibatch at a time is converted to float32.
    """
    n, d = acts_ND.shape
    check_train_config(cfg, d)
    gen = torch.Generator().manual_seed(cfg.seed)
    sample_SD = acts_ND[torch.randperm(n, generator=gen)[: min(n, 50_000)]].float()
    # Scale so that the *centred* activations have unit mean squared norm. 2407.14435 §5 scales the raw
    # norm; Gemma's residual stream carries a large constant component (97% of the norm at layer 6 of
    # Gemma 3 270M), which would shrink the informative part ~10x relative to θ's init and ε.
    scale = (sample_SD - sample_SD.mean(0)).pow(2).sum(-1).mean().sqrt().item()
    # b_dec starts at the coordinate-wise median, a cheap stand-in for the geometric median (Bricken et al.).
    sae = TrainableSAE(d, cfg, init_bias_DN=sample_SD.median(0).values / scale)
    theta = [p for name, p in sae.named_parameters() if name == "log_threshold"]
    rest = [p for name, p in sae.named_parameters() if name != "log_threshold"]
    groups = [{"params": rest, "mult": 1.0}] + (
        [{"params": theta, "mult": cfg.threshold_lr_mult}] if theta else []
    )
    opt = torch.optim.Adam(groups, lr=cfg.lr)
    total = max(1, math.ceil(cfg.epochs * n / cfg.batch_size))
    l0_warm = max(1, int(total * cfg.l0_warmup))
    last_fired_F = torch.zeros(cfg.width, dtype=torch.long)
    seen, history, order = 0, [], torch.empty(0, dtype=torch.long)

    columns = [
        TextColumn("train SAE"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
    ]
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("train", total=total, stats="")
        for step in range(total):
            if len(order) < cfg.batch_size:  # new epoch: a fresh permutation, leftovers first
                order = torch.cat([order, torch.randperm(n, generator=gen)])
            idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
            x_ND = acts_ND[idx].float() / scale
            lr = cfg.lr * _schedule(step, total, cfg.lr_warmup)
            for group in opt.param_groups:
                group["lr"] = lr * group["mult"]
            x_hat_ND, f_NF, l0_N, pre_NF = sae(x_ND)
            mse = (x_hat_ND - x_ND).pow(2).sum(-1).mean()
            dead_F = (seen - last_fired_F) >= min(cfg.dead_tokens, max(seen, 1))
            lam, aux = 0.0, torch.zeros(())
            if cfg.architecture == "jumprelu":
                lam = cfg.l0_coeff * min(1.0, (step + 1) / l0_warm)
                l0 = l0_N.mean()
                loss = mse + lam * ((l0 / cfg.target_l0 - 1) ** 2 if cfg.target_l0 else l0)
                if cfg.preact_coeff:  # decoder rows have unit norm, so ‖W_dec‖ drops out
                    theta_F = sae.log_threshold.exp()
                    loss = loss + cfg.preact_coeff * (theta_F - pre_NF).relu().sum(-1).mean()
            else:
                aux = sae.aux_loss(x_ND, x_hat_ND, pre_NF, dead_F) if seen else aux
                loss = mse + cfg.aux_coeff * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.remove_parallel_grad()
            opt.step()
            sae.normalise_decoder()

            seen += len(idx)
            last_fired_F[(f_NF > 0).any(0)] = seen
            if step % cfg.log_every == 0 or step == total - 1:
                with torch.no_grad():
                    var = (x_ND - x_ND.mean(0)).pow(2).sum()
                    row = {
                        "step": step,
                        "tokens": seen,
                        "lr": lr,
                        "l0_coeff": lam,
                        "loss": loss.item(),
                        "mse": mse.item(),
                        "l0": (f_NF > 0).sum(-1).float().mean().item(),
                        "var_explained": 1 - (x_hat_ND - x_ND).pow(2).sum().item() / var.item(),
                        "dead_frac": dead_F.float().mean().item(),
                        "aux": float(aux),
                    }
                history.append(row)
                bar.update(
                    task,
                    stats=f"mse {row['mse']:.3f}  L0 {row['l0']:.1f}  "
                    f"FVE {row['var_explained']:.3f}  dead {row['dead_frac']:.1%}",
                )
            bar.advance(task)
    # Judged on the last `dead_tokens` tokens, but at most the second half of a short run: almost every
    # latent fires at the start (θ starts tiny), so "never fired" would hide latents that died later.
    dead_F = (seen - last_fired_F) >= min(cfg.dead_tokens, seen // 2)
    return TrainResult(
        sae=sae,
        scale=scale,
        history=history,
        dead_frac=dead_F.float().mean().item(),
        steps=total,
        tokens=seen,
    )


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
    each starting with BOS (Gemma is very sensitive to a missing BOS, reference §4). Full windows need no
    padding: cutting each ~150-token document on its own wasted about half of every forward."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
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
            T = max(map(len, batch))
            ids_BT = torch.full((len(batch), T), pad_id, dtype=torch.long)
            mask_BT = torch.zeros((len(batch), T), dtype=torch.long)
            for i, w in enumerate(batch):
                ids_BT[i, : len(w)] = torch.tensor(w)
                mask_BT[i, : len(w)] = 1
            keep_BT = mask_BT.bool()
            keep_BT[:, :n_prefix] = False
            yield {"input_ids": ids_BT, "attention_mask": mask_BT, "keep": keep_BT, "n_windows": len(batch)}
            batch = []


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
        old = json.loads(meta_path.read_text())
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
    columns = [
        TextColumn("activations"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[rate]}"),
    ]
    t0, start = time.perf_counter(), filled
    with Progress(*columns, disable=not progress) as bar, torch.inference_mode():
        task = bar.add_task("acts", total=n_tokens, completed=filled, rate="")
        for i, batch in enumerate(batch_windows(windows, batch_size, pad, n_prefix)):
            acts_BTD = forward_to(
                model, [hook], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            )[hook]
            rows_ND = acts_BTD[batch["keep"]].float()[: n_tokens - filled]
            buf[filled : filled + len(rows_ND)] = rows_ND.clamp(-65504, 65504).half()
            filled += len(rows_ND)
            done += batch["n_windows"]
            rate = (filled - start) / (time.perf_counter() - t0)
            bar.update(task, completed=filled, rate=f"{rate:.0f} tok/s")
            if cache and (i % 20 == 19 or filled >= n_tokens):
                mm.flush()
                _write_meta(meta_path, {**meta, "filled": filled, "windows": done})
            if filled >= n_tokens:
                break
    if cache:
        _write_meta(meta_path, {**meta, "filled": filled, "windows": done})
    if filled < n_tokens:
        log.warning("the corpus ran out after %d of %d tokens", filled, n_tokens)
    return buf[:filled]


def _write_meta(path: Path, meta: dict) -> None:
    write_json(path, meta)


# --- evaluation on held-out text ---------------------------------------------------------------------------


def _next_token_ce(logits_BTV: Tensor, ids_BT: Tensor, sel_BT: Tensor, mask_BT: Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy over positions t with sel[t] whose target t+1 is a real token."""
    sel_BT = sel_BT[:, :-1] & mask_BT[:, 1:].bool()
    logits_NV = logits_BTV[:, :-1][sel_BT].float()
    targets_N = ids_BT[:, 1:][sel_BT]
    return torch.nn.functional.cross_entropy(logits_NV, targets_N, reduction="sum").item(), len(targets_N)


def _ce_three_ways(model, sae: SAE, hook: str, inputs: dict, keep_BT: Tensor) -> tuple[Tensor, dict, int]:
    """One batch through the model clean, with the SAE reconstruction spliced in at the kept positions,
    and with zeros there; returns the clean activations, the summed CEs and the token count."""
    store: dict[str, Tensor] = {}

    def record(act: Tensor) -> Tensor:
        store["x"] = act
        return act

    def splice(act: Tensor) -> Tensor:
        return torch.where(keep_BT[..., None], sae(act).to(act.dtype), act)

    def zero(act: Tensor) -> Tensor:
        return act.masked_fill(keep_BT[..., None], 0.0)

    sums, count = {}, 0
    for name, fn in (("clean", record), ("sae", splice), ("zero", zero)):
        with edit(model, hook, fn):
            logits_BTV = model(**inputs, use_cache=False).logits
        sums[name], count = _next_token_ce(logits_BTV, inputs["input_ids"], keep_BT, inputs["attention_mask"])
        del logits_BTV
    return store["x"], sums, count


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
    progress: bool = True,
) -> dict[str, float]:
    """Quality of `sae` at `hook` on held-out text, the usual SAE metrics (SAEBench "core"):

    - variance explained `1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²`, mean L0, fraction of latents that never fire;
    - next-token CE of the model clean, with x̂ spliced in at the hook, and with zeros spliced in, on the
      first `ce_tokens` predicted tokens: `delta_ce = ce_sae − ce_clean`, `ce_loss_recovered =
      (ce_zero − ce_sae) / (ce_zero − ce_clean)`.
    BOS and padding are left out everywhere (and left untouched by the splice): the SAE never saw BOS.
    """
    n_prefix = int(tokenizer.bos_token_id is not None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sse, sum_sq, n, l0_sum = 0.0, 0.0, 0, 0.0
    sum_x_D = torch.zeros(sae.d_in, dtype=torch.float64)
    fired_F = torch.zeros(sae.d_sae, dtype=torch.bool)
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    ce_n = 0
    columns = [
        TextColumn("evaluate SAE"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("eval", total=max_tokens, info="")
        for batch in batch_windows(token_windows(tokenizer, texts, max_length), batch_size, pad, n_prefix):
            ids_BT, mask_BT, keep_BT = batch["input_ids"], batch["attention_mask"], batch["keep"]
            inputs = {"input_ids": ids_BT, "attention_mask": mask_BT}
            if ce_n < ce_tokens:
                acts_BTD, sums, count = _ce_three_ways(model, sae, hook, inputs, keep_BT)
                ce = {k: ce[k] + sums[k] for k in ce}
                ce_n += count
            else:
                acts_BTD = forward_to(model, [hook], **inputs)[hook]
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
                info=f"{n} tokens, FVE {1 - sse / (sum_sq - sum_x_D.pow(2).sum().item() / n):.3f}",
            )
            if max_tokens is not None and n >= max_tokens:
                break
    if n == 0:
        raise UnlearnError("no evaluation tokens: the held-out texts are empty")
    total_var = sum_sq - sum_x_D.pow(2).sum().item() / n
    out = {
        "tokens": n,
        "variance_explained": 1 - sse / total_var,
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
            "ce_loss_recovered": (zeroed - spliced) / (zeroed - clean) if zeroed != clean else float("nan"),
        }
    return out


# --- the run and its command ---------------------------------------------------------------------------------


@dataclass
class TrainSAEConfig:
    """One `unlearn train-sae` run: where activations come from, how to train, where the SAE goes."""

    model: str = DEFAULT_PRESET
    """Preset name (its model and hook point) or a model spec (hub id, folder, .gguf)."""
    hook: str | None = None
    """Hook point, e.g. `blocks.6.hook_resid_post`; default: the preset's."""
    sources: list[str] = field(default_factory=lambda: ["offline:bio-forget", "offline:retain"])
    """Training corpora (`unlearn.data.iter_texts` sources), interleaved document by document."""
    eval_sources: list[str] = field(
        default_factory=lambda: ["offline:bio-forget-heldout", "offline:retain-heldout"]
    )
    """Held-out corpora for the quality metrics."""
    tokens: int = 300_000
    """Activation tokens to collect (BOS and padding excluded); training makes `epochs` passes over them."""
    max_length: int = 128
    """Tokens per window (documents are cut into windows that each start with BOS)."""
    forward_batch: int = 16
    """Windows per model forward."""
    eval_tokens: int | None = 100_000
    """At most this many held-out tokens for variance explained, L0 and dead latents (None: all)."""
    ce_tokens: int = 8192
    """Held-out tokens for the spliced-in CE (three full forwards each, the slow part)."""
    train: SAETrainConfig = field(default_factory=SAETrainConfig)
    """Optimisation hyper-parameters."""
    save_dtype: str = "float16"
    """dtype of the saved weights (float16 keeps a shipped SAE small; metrics use the saved weights)."""
    activations: Path | None = None
    """Float16 activation cache file (outside the repo) to reuse/resume between tries; None: in memory."""
    out: Path | None = None
    """Also copy the SAE folder (+ training.json, metrics.json) here, e.g. data/saes/<name>."""
    dtype: str | None = None
    """Model dtype (default: the preset's)."""
    device: str | None = None
    """cpu, cuda, ... (default: cuda if available)."""
    run_id: str | None = None
    """Run folder name under results/train-sae/ (default: a timestamp)."""


_SAVE_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def run_train_sae(cfg: TrainSAEConfig, *, progress: bool = True) -> Path:
    """Collect activations, train, save (SAELens folder), evaluate the saved SAE; returns the run folder."""
    if not cfg.sources:
        raise UnlearnError("pass at least one training corpus with --source")
    if cfg.save_dtype not in _SAVE_DTYPES:
        raise UnlearnError(f"--save-dtype must be one of {', '.join(_SAVE_DTYPES)}, got {cfg.save_dtype!r}")
    if cfg.tokens < cfg.train.batch_size:
        raise UnlearnError(f"--tokens ({cfg.tokens}) must be at least --batch-size ({cfg.train.batch_size})")
    lm = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    hook = cfg.hook or (lm.preset.hook_point if lm.preset else None)
    if hook is None:
        raise UnlearnError(
            f"{cfg.model!r} is not a preset with a hook point; pass --hook blocks.<L>.hook_resid_post"
        )
    d_in = hook_width(lm.model, hook)
    check_train_config(cfg.train, d_in)
    run_dir = new_run_dir("train-sae", cfg.run_id)
    model_dtype = str(next(lm.model.parameters()).dtype).removeprefix("torch.")
    config = {
        "command": "train-sae",
        "preset": lm.preset.name if lm.preset else None,
        "model": lm.source,
        "hook": hook,
        "d_in": d_in,
        **dataclasses.asdict(cfg),
    }
    write_json(run_dir / "config.json", config)

    t0 = time.perf_counter()
    key = {
        "model": lm.source,
        "hook": hook,
        "sources": cfg.sources,
        "max_length": cfg.max_length,
        "dtype": model_dtype,
        "windows": "joined",  # token_windows' layout; older caches cut documents one by one
    }
    acts_ND = collect_activations(
        lm.model,
        lm.tokenizer,
        hook,
        mixed_texts(cfg.sources),
        n_tokens=cfg.tokens,
        max_length=cfg.max_length,
        batch_size=cfg.forward_batch,
        cache=cfg.activations,
        cache_key=key,
        progress=progress,
    )
    t1 = time.perf_counter()
    result = train_sae(acts_ND, cfg.train, progress=progress)
    t2 = time.perf_counter()
    sae_dir = result.sae.to_sae(result.scale, hook_name=hook, dtype=_SAVE_DTYPES[cfg.save_dtype]).save(
        run_dir / "sae"
    )
    write_table(run_dir / "losses.csv", pd.DataFrame(result.history))

    saved = load_sae(sae_dir, dtype=torch.float32, device=lm.model.device)
    held_out = evaluate_sae(
        lm.model,
        lm.tokenizer,
        saved,
        hook,
        mixed_texts(cfg.eval_sources),
        max_length=cfg.max_length,
        ce_tokens=cfg.ce_tokens,
        max_tokens=cfg.eval_tokens,
        progress=progress,
    )
    metrics = {
        **held_out,
        "eval_sources": cfg.eval_sources,
        "dead_frac_train": result.dead_frac,
        "train_last": result.history[-1],
    }
    training = {
        **config,
        "activation_tokens": len(acts_ND),
        "train_tokens": result.tokens,
        "steps": result.steps,
        "input_scale": result.scale,
        "model_dtype": model_dtype,
        "seconds": {"activations": t1 - t0, "training": t2 - t1, "evaluation": time.perf_counter() - t2},
    }
    write_json(sae_dir / "training.json", training)
    write_json(sae_dir / "metrics.json", metrics)
    write_json(run_dir / "metrics.json", metrics)
    if cfg.out:
        shutil.copytree(sae_dir, cfg.out, dirs_exist_ok=True)
        log.info("SAE copied to %s", cfg.out)
    return run_dir


def metrics_table(metrics: dict) -> Table:
    table = Table(title="SAE quality on held-out text")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("variance explained", "variance_explained", "{:.3f}"),
        ("L0", "l0", "{:.1f}"),
        ("dead latents (held-out)", "dead_frac", "{:.1%}"),
        ("dead latents (training)", "dead_frac_train", "{:.1%}"),
        ("CE clean", "ce_clean", "{:.4f}"),
        ("CE with SAE", "ce_sae", "{:.4f}"),
        ("delta CE", "delta_ce", "{:+.4f}"),
        ("CE zero-ablated", "ce_zero", "{:.4f}"),
        ("CE loss recovered", "ce_loss_recovered", "{:.3f}"),
        ("tokens (CE tokens)", "tokens", "{}"),
    ]
    for label, key, fmt in rows:
        if key in metrics:
            value = fmt.format(metrics[key])
            table.add_row(label, value + (f" ({metrics['ce_tokens']})" if key == "tokens" else ""))
    return table


def train_sae_command(
    model: Annotated[str, typer.Option(help="Preset (model + hook point) or model spec.")] = DEFAULT_PRESET,
    hook: Annotated[str | None, typer.Option(help="Hook point (default: the preset's).")] = None,
    architecture: Annotated[str, typer.Option(help="jumprelu or topk.")] = "jumprelu",
    width: Annotated[int, typer.Option(help="Latents (d_sae).")] = 2048,
    l0_coeff: Annotated[float, typer.Option(help="jumprelu: λ of the L0 penalty.")] = 2e-3,
    target_l0: Annotated[
        float | None, typer.Option(help="jumprelu: penalise (L0/target − 1)² instead.")
    ] = None,
    preact_coeff: Annotated[
        float, typer.Option(help="jumprelu: pre-activation loss weight (revives dead latents).")
    ] = 0.0,
    k: Annotated[int, typer.Option(help="topk: active latents per token.")] = 32,
    l0_warmup: Annotated[
        float, typer.Option(help="jumprelu: fraction of steps the L0 penalty ramps up.")
    ] = 0.1,
    threshold_lr_mult: Annotated[float, typer.Option(help="jumprelu: threshold lr / base lr.")] = 10.0,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 2e-3,
    tokens: Annotated[int, typer.Option(help="Activation tokens to collect.")] = 300_000,
    epochs: Annotated[float, typer.Option(help="Passes over the collected activations.")] = 2.0,
    batch_size: Annotated[int, typer.Option(help="Tokens per optimiser step.")] = 2048,
    max_length: Annotated[int, typer.Option(help="Tokens per text window.")] = 128,
    source: Annotated[list[str] | None, typer.Option(help="Training corpus (repeat to mix).")] = None,
    eval_source: Annotated[list[str] | None, typer.Option(help="Held-out corpus (repeat to mix).")] = None,
    ce_tokens: Annotated[int, typer.Option(help="Held-out tokens for the spliced CE.")] = 8192,
    seed: Annotated[int, typer.Option(help="Initialisation and shuffling seed.")] = 0,
    activations: Annotated[Path | None, typer.Option(help="Activation cache file to reuse/resume.")] = None,
    out: Annotated[Path | None, typer.Option(help="Also copy the SAE here (e.g. data/saes/NAME).")] = None,
    save_dtype: Annotated[str, typer.Option(help="float16, float32 or bfloat16.")] = "float16",
    dtype: Annotated[str | None, typer.Option(help="Model dtype.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda ...")] = None,
    run_id: Annotated[str | None, typer.Option(help="Run folder name (default: timestamp).")] = None,
) -> None:
    """Train a JumpReLU (or TopK) SAE on activations at a hook point; report its held-out quality."""
    defaults = TrainSAEConfig()
    train = SAETrainConfig(
        architecture=architecture,
        width=width,
        l0_coeff=l0_coeff,
        target_l0=target_l0,
        preact_coeff=preact_coeff,
        k=k,
        l0_warmup=l0_warmup,
        threshold_lr_mult=threshold_lr_mult,
        lr=lr,
        batch_size=batch_size,
        epochs=epochs,
        seed=seed,
    )
    cfg = TrainSAEConfig(
        model=model,
        hook=hook,
        sources=source or defaults.sources,
        eval_sources=eval_source or defaults.eval_sources,
        tokens=tokens,
        max_length=max_length,
        ce_tokens=ce_tokens,
        train=train,
        save_dtype=save_dtype,
        activations=activations,
        out=out,
        dtype=dtype,
        device=device,
        run_id=run_id,
    )
    run_dir = run_train_sae(cfg)
    console = Console()
    console.print(metrics_table(read_json(run_dir / "metrics.json")))
    console.print(f"SAE: {run_dir / 'sae'}" + (f"  (copied to {out})" if out else ""))
