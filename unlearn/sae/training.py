"""Training a sparse autoencoder on an activation tensor (the optimisation behind `unlearn train-sae`).

Two architectures, both giving a plain `unlearn.sae.model.SAE` (SAELens format when saved):
- `jumprelu` (Rajamanoharan et al. 2024, arXiv 2407.14435; the Gemma Scope recipe, arXiv 2408.05147):
  `f = pre · H(pre − θ)`, loss `‖x − x̂‖² + λ·L0`. H has no useful derivative, so θ learns through
  straight-through estimators with a rectangle kernel of bandwidth ε (`JumpReLUFn`, `StepFn`).
- `topk` (Gao et al. 2024, arXiv 2406.04093): keep the k largest of `relu(pre)`; MSE plus AuxK, which
  teaches dead latents to model the residual.

Inputs are scaled to unit mean squared norm during training (2407.14435 §5; centred first, see
`train_sae`) so that ε, the threshold init and λ transfer between models; the scale is folded back into
the saved weights, so the saved SAE reads raw activations. Decoder rows are kept at unit norm (as
SAEBench/dictionary_learning do), and saved that way: activations come out in residual units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from unlearn.errors import UnlearnError
from unlearn.progress import progress_bar
from unlearn.sae.model import SAE
from unlearn.sae.quality import variance_explained

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
        """Fold the input scale s back in: x' = x/s, so W_enc/s reads raw x; x̂ = s·x̂' scales the decoder.
        Then re-parametrise to unit-norm decoder rows (`SAE.unit_norm_decoder`), so saved activations are
        in residual units (x̂ is unchanged; in effect W_enc stays raw and b_enc, θ are multiplied by s)."""
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
        return sae.unit_norm_decoder().to(dtype)


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

    with progress_bar("train SAE", "stats", enabled=progress) as bar:
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
                    row = {
                        "step": step,
                        "tokens": seen,
                        "lr": lr,
                        "l0_coeff": lam,
                        "loss": loss.item(),
                        "mse": mse.item(),
                        "l0": (f_NF > 0).sum(-1).float().mean().item(),
                        "var_explained": variance_explained(x_ND, x_hat_ND),
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
