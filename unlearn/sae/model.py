"""Sparse autoencoders: one small module for the three inference architectures the toolkit meets.

- `jumprelu` (Gemma Scope, Lieberum et al. 2024, arXiv 2408.05147):
  `pre = x @ W_enc + b_enc; f = relu(pre) * (pre > threshold)`.
- `standard` (ReLU; Bricken et al. 2023, jbloom's and the authors' gemma-2b-it SAEs): `f = relu(pre)`.
- `topk` (Gao et al. 2024, arXiv 2406.04093): keep the k largest of `relu(pre)` per row, zero the rest.

All decode as `f @ W_dec + b_dec`. `apply_b_dec_to_input` subtracts `b_dec` from the input first (SAELens'
default); Gemma Scope SAEs must have it False (Gemma Scope, arXiv 2408.05147) or every activation is wrong.

Dtype contract: `encode`/`decode`/`forward` compute in the SAE's dtype and return that dtype; an input of
another dtype is cast in. Callers that edit a bf16 model cast the result back themselves.

This module is a leaf: files, formats and the pretrained registry live in `unlearn.sae.loaders` (`load_sae`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, get_args

import torch
from safetensors.torch import save
from torch import Tensor, nn

from unlearn.checks import DTYPE_NAMES
from unlearn.errors import UnlearnError

logger = logging.getLogger(__name__)

Architecture = Literal["jumprelu", "standard", "topk"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)

# SAELens' file names (sae_lens/constants.py), so that our folders load in SAELens and vice versa.
SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"


class SAE(nn.Module):
    """An inference-only SAE whose parameters are named and laid out as in SAELens and Gemma Scope."""

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        architecture: Architecture = "jumprelu",
        *,
        k: int | None = None,
        apply_b_dec_to_input: bool = False,
        hook_name: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise UnlearnError(
                f"SAE architecture {architecture!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
            )
        if architecture == "topk" and (k is None or not 0 < k <= d_sae):
            raise UnlearnError(f"a topk SAE needs 0 < k <= d_sae={d_sae}, got k={k}")
        self.architecture: Architecture = architecture
        self.k: int | None = k if architecture == "topk" else None
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.hook_name = hook_name
        kw = {"dtype": dtype, "device": device}
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, **kw))  # (d_in, d_sae)
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, **kw))  # (d_sae, d_in)
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        self.threshold: nn.Parameter | None = (
            nn.Parameter(torch.zeros(d_sae, **kw)) if architecture == "jumprelu" else None
        )
        # Inference only: outputs need no autograd graph unless the input does (attribution through x).
        # `sae.requires_grad_(True)` makes it trainable.
        self.requires_grad_(False)

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k is not None else ""
        return (
            f"{self.architecture}, d_in={self.d_in}, d_sae={self.d_sae}{k}, "
            f"apply_b_dec_to_input={self.apply_b_dec_to_input}, hook_name={self.hook_name!r}"
        )

    # --- forward pieces -------------------------------------------------------------------------------

    def _sae_in(self, x_ND: Tensor) -> Tensor:
        x_ND = x_ND.to(self.dtype)
        return x_ND - self.b_dec if self.apply_b_dec_to_input else x_ND

    def pre_acts(self, x_ND: Tensor) -> Tensor:
        """Encoder pre-activations `(x - b_dec?) @ W_enc + b_enc`, shape (..., d_sae)."""
        return self._sae_in(x_ND) @ self.W_enc + self.b_enc

    def _activate(self, pre_NF: Tensor) -> Tensor:
        if self.architecture == "jumprelu":
            return pre_NF.relu() * (pre_NF > self.threshold)
        if self.architecture == "standard":
            return pre_NF.relu()
        # topk: top-k of pre then relu == top-k of relu(pre) (relu is monotone); SAELens does the same.
        vals_NK, idx_NK = pre_NF.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre_NF).scatter_(-1, idx_NK, vals_NK.relu())

    def encode(self, x_ND: Tensor) -> Tensor:
        """Feature activations f, shape (..., d_sae), in the SAE's dtype."""
        return self._activate(self.pre_acts(x_ND))

    def decode(self, f_NF: Tensor) -> Tensor:
        """Reconstruction `f @ W_dec + b_dec`, shape (..., d_in), in the SAE's dtype."""
        return f_NF.to(self.dtype) @ self.W_dec + self.b_dec

    def forward(self, x_ND: Tensor) -> Tensor:
        return self.decode(self.encode(x_ND))

    def encode_subset(self, x_ND: Tensor, idx_K: Tensor | list[int]) -> Tensor:
        """Activations of only the features `idx_K`, shape (..., K); equal to `encode(x)[..., idx_K]`.

        Cheap for jumprelu/standard (only K encoder columns are used), which is what makes the clamping
        hook affordable with 16k-1M-feature SAEs. A topk feature is active only if it is among the row's
        k largest, which needs every pre-activation, so topk computes them all (and the k-th value).
        """
        idx_K = torch.as_tensor(idx_K, dtype=torch.long, device=self.device)
        if self.architecture == "topk":
            pre_NF = self.pre_acts(x_ND)
            kth_N1 = pre_NF.topk(self.k, dim=-1).values[..., -1:]
            pre_NK = pre_NF[..., idx_K]
            # ties at the k-th value: topk keeps exactly k; ties are measure-zero for real activations.
            return pre_NK.relu() * (pre_NK >= kth_N1)
        pre_NK = self._sae_in(x_ND) @ self.W_enc[:, idx_K] + self.b_enc[idx_K]
        if self.architecture == "jumprelu":
            return pre_NK.relu() * (pre_NK > self.threshold[idx_K])
        return pre_NK.relu()

    # --- conventions ----------------------------------------------------------------------------------

    def decoder_norms(self) -> Tensor:
        """||W_dec[i]|| per feature, float64, shape (d_sae,)."""
        return self.W_dec.detach().double().norm(dim=-1)

    @torch.no_grad()
    def unit_norm_decoder(self) -> SAE:
        """Re-parametrise in place so every decoder row has unit norm and activations are in residual
        units (the SAELens / Anthropic convention, Bricken et al. 2023): with n_i = ||W_dec[i]||,
        W_dec[i] /= n_i, W_enc[:, i] *= n_i, b_enc[i] *= n_i, threshold[i] *= n_i. Then f_i becomes
        n_i f_i and f_i W_dec[i] is unchanged, so reconstructions are identical (computed in float64,
        then cast back). A clamp value then means the same edit size for every feature.

        TopK picks the k largest pre-activations; a per-feature rescale would change that choice, so a
        topk SAE is accepted only when its decoder norms are all equal (as `train-sae` writes them).
        Returns self.
        """
        from unlearn.checks import require_finite_tensors

        require_finite_tensors(
            self.state_dict(), "the SAE being re-parametrised", "not saved; lower the learning rate"
        )
        n_F = self.decoder_norms()
        if not bool((n_F > 0).all()):
            dead = torch.nonzero(n_F == 0).flatten()[:5].tolist()
            raise UnlearnError(f"SAE decoder rows {dead} are zero; a unit-norm decoder is undefined there")
        if self.architecture == "topk" and float(n_F.max() - n_F.min()) > 1e-6 * float(n_F.max()):
            raise UnlearnError(
                "topk SAE with unequal decoder norms: rescaling features would change which k win; "
                "keep it in its own convention"
            )
        dtype = self.dtype
        self.W_dec.copy_((self.W_dec.double() / n_F[:, None]).to(dtype))
        self.W_enc.copy_((self.W_enc.double() * n_F[None, :]).to(dtype))
        self.b_enc.copy_((self.b_enc.double() * n_F).to(dtype))
        if self.threshold is not None:
            self.threshold.copy_((self.threshold.double() * n_F).to(dtype))
        return self

    # --- persistence ----------------------------------------------------------------------------------

    def cfg_dict(self) -> dict:
        """The SAELens 6.x `cfg.json` for this SAE (read back by `load_saelens_folder` and by SAELens)."""
        cfg = {
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": DTYPE_NAMES.get(self.dtype, str(self.dtype).removeprefix("torch.")),
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": {"hook_name": self.hook_name, "sae_lens_version": "6.0.0"},
        }
        if self.architecture == "topk":
            cfg["k"] = self.k
            cfg["rescale_acts_by_decoder_norm"] = False
        return cfg

    def save(self, folder: str | Path, *, matrix_dtype: torch.dtype | None = None) -> Path:
        """Write a SAELens 6.x folder: `cfg.json` + `sae_weights.safetensors`. Returns the folder.

        `matrix_dtype` stores W_enc/W_dec in a smaller dtype (float16 keeps a shipped SAE small) while
        biases and thresholds keep the SAE's dtype; loaders cast everything to `cfg.json`'s dtype."""
        from unlearn.checks import require_finite_tensors
        from unlearn.results import write_bytes, write_json

        folder = Path(folder)
        tensors = {"W_enc": self.W_enc, "W_dec": self.W_dec, "b_enc": self.b_enc, "b_dec": self.b_dec}
        if self.threshold is not None:
            tensors["threshold"] = self.threshold
        require_finite_tensors(
            tensors, f"the SAE to be saved at {folder}", "not saved; lower the learning rate"
        )
        if matrix_dtype is not None:
            tensors["W_enc"], tensors["W_dec"] = self.W_enc.to(matrix_dtype), self.W_dec.to(matrix_dtype)
        # atomically (temp file + rename), weights before cfg.json, so a crash never leaves a folder that loads
        write_bytes(
            folder / SAE_WEIGHTS_FILENAME,
            save({n: t.detach().cpu().contiguous() for n, t in tensors.items()}),
        )
        write_json(folder / SAE_CFG_FILENAME, self.cfg_dict())
        return folder
