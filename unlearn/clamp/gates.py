"""Gated clamping: clamp the selected SAE features only in sequences whose forget-feature activity passes a
calibrated threshold (Dynamic SAE Guardrails, Muhamed et al., arXiv 2504.08192, code
`aashiqmuhamed/DynamicSAEGuardrails` `utils/intervention.py`), plus statistics a prefix cannot dilute.

Per token t of a sequence, the evidence e_t is 1 if any of the N selected features is > 0 (`any`, their
rule), how many of them are (`count`), or the summed activation of those features (`sum`), each times its `weights` entry (1 / its typical
activation: every feature then counts in the same unit, and the statistic is continuous, so a quantile
threshold hits its target rate instead of sitting on a tie of `any`'s k / window values); BOS positions
have e_t = 0 (their code zeroes BOS), and so do massive-activation "sink" tokens (`SINK_RATIO`), which
are never edited either; padding is not part of the sequence. Per sequence, the statistic is

- `dsg`: ρ = Σ e_t / (number of real tokens, BOS included). At batch size 1 this is exactly their ρ
  (active tokens / padded length); counting real tokens only makes it independent of padding.
- `window`: max over windows of `window` consecutive real tokens of Σ e / `window`, the denominator fixed
  (the sequence is read as if padded by zero-evidence tokens, so it is defined below `window` tokens, and
  adding evidence-free tokens before or after never lowers it).
- `cusum`: max_t S_t, S_t = max(0, S_{t-1} + e_t - drift), S_0 = 0 (Page's CUSUM): an evidence-free
  prefix only keeps S at 0, an evidence-free suffix only lets S fall after its maximum.

If the statistic is > `threshold`, the sequence is edited on its active tokens (some feature > 0): with
`scope="token"` (their rule) all N features are set to `value` there, with `scope="feature"` only the
active ones (the static clamp's rule). `span="windows"` (window gate only) edits only the active tokens
inside a window that itself passes the threshold (`window_cover`), so unrelated text around a forget
question is neither counted nor edited: with `span="sequence"` a long prompt that fires edits every
active token of it, and those edits damage the context the question is read in. The edit is the cheap exact form x + (f' − f)·W_dec (error term
kept). Sequences that do not fire, BOS positions and inactive tokens are returned bit-identical.

Cached generation: with a KV cache each forward sees only new tokens, so the hook keeps each batch row's
evidence since the last forward without a filled cache and decides on the whole history; tokens already
in the cache keep the decision made when they were computed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn

from unlearn.batches import right_padded
from unlearn.errors import UnlearnError
from unlearn.hooks import edit_with_inputs, forward_to, sae_site, text_config

SINK_RATIO = 4.0
"""Massive-activation tokens (Sun et al., arXiv 2402.17762): a few delimiter tokens ('.', "'", spaces) get
residual norms 10x or more a text token's and act as attention sinks, as BOS does. In Gemma 3 270M at
blocks.6 they appear past ~128 tokens (norm ~40,000 vs a median ~3,400; no other token above 1.5x the
median), outside the 128-token windows the shipped SAE was trained on, and carry ~90% of a long benign
text's gate evidence; so the gate treats them as it treats BOS (DSG zeroes BOS for the same reason)."""

GateKind = Literal["none", "dsg", "window", "cusum"]
GATE_KINDS: tuple[str, ...] = get_args(GateKind)
Evidence = Literal["any", "count", "sum"]
Scope = Literal["token", "feature"]
Span = Literal["sequence", "windows"]


@dataclass(frozen=True)
class Gate:
    """A gate and its edit; `to_json()` is what a result point records."""

    kind: GateKind
    threshold: float = 0.0
    """Fires when the sequence's statistic is strictly greater."""
    features: tuple[int, ...] = ()
    value: float = -20.0
    """Feature value written on edited tokens (−c; their bio c = 500, too small for Gemma 3's residual)."""
    values: tuple[float, ...] | None = None
    """One value per feature instead of `value` (clamps in units of each feature's typical activation)."""
    window: int = 16
    """`window`: tokens per window (the fixed denominator)."""
    drift: float = 0.25
    """`cusum`: evidence subtracted per token (k)."""
    evidence: Evidence = "any"
    weights: tuple[float, ...] | None = None
    """`sum` evidence: one multiplier per feature (e.g. 1 / typical activation); None = 1."""
    scope: Scope = "token"
    sink_ratio: float | None = SINK_RATIO
    """Tokens whose residual norm exceeds this multiple of their sequence's median token norm are treated
    as BOS is: no evidence, never edited (None: count every token)."""
    span: Span = "sequence"
    """Where a firing sequence is edited: every active token (`sequence`, their rule), or only those inside
    a window whose own statistic passes (`windows`; window gate only)."""
    target_fpr: float | None = None
    """The false-positive rate `threshold` was calibrated for (recorded, not used)."""
    measured_fpr: dict[str, float] | None = None
    """Measured firing rates on named benign sets (recorded, not used)."""
    calibration_prefix: int = 0
    """Tokens of benign filler before each dev retain question `threshold` was calibrated on (recorded)."""

    def __post_init__(self):
        if self.kind not in GATE_KINDS:
            raise UnlearnError(f"Unknown gate {self.kind!r}; use one of: {', '.join(GATE_KINDS)}.")
        if self.evidence not in get_args(Evidence):
            raise UnlearnError(f"Unknown gate evidence {self.evidence!r}; use any, count or sum.")
        if self.scope not in get_args(Scope):
            raise UnlearnError(f"Unknown gate scope {self.scope!r}; use token or feature.")
        if self.span not in get_args(Span):
            raise UnlearnError(f"Unknown gate span {self.span!r}; use sequence or windows.")
        if self.span == "windows" and self.kind != "window":
            raise UnlearnError(f"span='windows' needs the window gate, not {self.kind!r}.")
        if self.window < 1:
            raise UnlearnError(f"Gate window must be >= 1 token, got {self.window}.")
        if not math.isfinite(self.threshold):
            raise UnlearnError(f"Gate threshold must be finite, got {self.threshold}.")
        object.__setattr__(self, "features", tuple(int(i) for i in self.features))
        for name in ("weights", "values"):  # optional, one finite number per feature
            given = getattr(self, name)
            if given is None:
                continue
            object.__setattr__(self, name, tuple(float(v) for v in given))
            if len(given) != len(self.features) or not all(map(math.isfinite, getattr(self, name))):
                raise UnlearnError(
                    f"Gate {name} must be finite, one per feature: {len(self.features)} features, "
                    f"{name} {list(given)}."
                )

    def replace(self, **changes) -> Gate:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["features"] = list(self.features)
        data["values"] = None if self.values is None else list(self.values)
        data["weights"] = None if self.weights is None else list(self.weights)
        return data

    @classmethod
    def from_json(cls, data: dict) -> Gate:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def check_gate_kind(kind: str) -> GateKind:
    if kind not in GATE_KINDS:
        raise UnlearnError(f"Unknown gate {kind!r}; use one of: {', '.join(GATE_KINDS)}.")
    return kind  # type: ignore[return-value]


# --- statistics of per-token evidence --------------------------------------------------------------------


def window_stat(e_T: np.ndarray, window: int) -> float:
    """max over windows of `window` tokens of Σe / window, the sequence padded by window − 1 zeros each side."""
    padded = np.concatenate([np.zeros(window), np.asarray(e_T, dtype=np.float64), np.zeros(window - 1)])
    c = np.cumsum(padded)
    return float((c[window:] - c[:-window]).max() / window)


def window_cover(e_T: np.ndarray, window: int, threshold: float) -> np.ndarray:
    """Per token: does some window holding it pass (Σe / window > threshold)? Windows as in `window_stat`
    (zero-padded ends), so an evidence-free prefix or suffix changes no original token's answer."""
    e = np.asarray(e_T, dtype=np.float64)
    padded = np.concatenate([np.zeros(window), e, np.zeros(window - 1)])
    c = np.cumsum(padded)
    passing = (c[window:] - c[:-window]) / window > threshold  # window s holds tokens s-window+1 .. s
    hits = np.concatenate([[0], np.cumsum(passing)])
    return hits[window : window + len(e)] - hits[: len(e)] > 0


def cusum_stat(e_T: np.ndarray, drift: float) -> float:
    """max_t S_t of S_t = max(0, S_{t-1} + e_t − drift), S_0 = 0, via Lindley's closed form
    S_t = C_t − min_{s≤t} C_s with C the running sum of e − drift (C_0 = 0)."""
    c = np.concatenate([[0.0], np.cumsum(np.asarray(e_T, dtype=np.float64) - drift)])
    return float((c - np.minimum.accumulate(c)).max())


def dsg_stat(e_T: np.ndarray) -> float:
    """ρ: Σe over the real tokens (BOS, whose evidence is 0, included in the count)."""
    e = np.asarray(e_T, dtype=np.float64)
    return float(e.sum() / len(e)) if len(e) else 0.0


def statistic(gate: Gate, e_T: np.ndarray) -> float:
    """The gate's statistic of one sequence's real-token evidence (in order, BOS entries 0)."""
    if gate.kind == "dsg":
        return dsg_stat(e_T)
    if gate.kind == "window":
        return window_stat(e_T, gate.window)
    if gate.kind == "cusum":
        return cusum_stat(e_T, gate.drift)
    return -math.inf  # none: never fires


# --- the hook --------------------------------------------------------------------------------------------


def real_tokens(mask, shape: torch.Size, device) -> Tensor:
    """(B, T) bool of real (non-padding) tokens of this forward's `T` positions, from a 2D 0/1 mask (the
    last T columns: with a cache it spans past tokens too), a 4D mask (a query is real when it may see
    key 0, as every real query of a right-padded or packed sequence does), a dict of 4D masks per layer
    kind (the full-attention one: a sliding one hides key 0 from late queries) or no mask (all real)."""
    B, T = shape
    if isinstance(mask, dict):  # one mask per layer kind (`scoring.layer_mask_types`): the full one
        mask = mask.get("full_attention")
    if not torch.is_tensor(mask):
        return torch.ones(B, T, dtype=torch.bool, device=device)
    if mask.dim() == 2:
        return mask[:, -T:].to(device).bool()
    if mask.dim() == 4:
        col = mask[:, 0, -T:, 0]
        return (col if col.dtype == torch.bool else col == 0).to(device)
    raise UnlearnError(f"Unsupported attention mask of shape {tuple(mask.shape)} under a gate.")


def token_evidence(gate: Gate, f_BTK: Tensor, counted_BT: Tensor) -> Tensor:
    """Per-token evidence (float64), 0 where not `counted` (BOS, padding)."""
    if gate.evidence == "any":
        e_BT = (f_BTK > 0).any(-1).double()
    elif gate.evidence == "count":
        e_BT = (f_BTK > 0).sum(-1).double()
    else:
        f_BTK = f_BTK.clamp(min=0).double()
        if gate.weights is not None:
            f_BTK = f_BTK * torch.tensor(gate.weights, dtype=torch.float64, device=f_BTK.device)
        e_BT = f_BTK.sum(-1)
    return e_BT * counted_BT


def sink_tokens(norm_BT: Tensor, counted_BT: Tensor, ratio: float | None) -> Tensor:
    """(B, T) bool: counted tokens whose residual norm is above `ratio` x their row's median counted norm
    (`SINK_RATIO`); none when `ratio` is None or a row counts no token."""
    if ratio is None:
        return torch.zeros_like(counted_BT)
    norm_BT = norm_BT.double()
    med_B = torch.nanmedian(norm_BT.masked_fill(~counted_BT, math.nan), dim=1).values
    return counted_BT & (norm_BT > ratio * med_B[:, None])


class FiringLog:
    """Each forward's per-sequence gate statistics, grouped under the label set by `start` (e.g. a task's
    role): pass it as `gated(record=...)` and read the rates of what the model actually saw."""

    def __init__(self) -> None:
        self.stats: dict[str, list[float]] = {}
        self._label = "all"

    def start(self, label: str) -> None:
        self._label = label

    def append(self, stats: list[float]) -> None:
        self.stats.setdefault(self._label, []).extend(stats)

    def all_stats(self) -> list[float]:
        return [s for group in self.stats.values() for s in group]

    def rates(self, threshold: float, suffix: str = "") -> dict[str, float]:
        return {f"{label}{suffix}": firing_rate(s, threshold) for label, s in self.stats.items()}


def sequence_stats(gate: Gate, e_BT: Tensor, real_BT: Tensor) -> list[float]:
    """The statistic of each row, over its real tokens only (so padding, wherever it is, cannot matter)."""
    return _decide(gate, e_BT, real_BT, cover=False)[0]


def _decide(gate: Gate, e_BT: Tensor, real_BT: Tensor, *, cover: bool) -> tuple[list[float], Tensor | None]:
    """Each row's statistic and, with `cover`, the (B, T) bool of real tokens inside a passing window of
    their row (`window_cover`; a row that does not fire covers nothing), from one copy to numpy."""
    e, r = e_BT.detach().cpu().numpy(), real_BT.detach().cpu().numpy()
    stats = [statistic(gate, e[b][r[b]]) for b in range(e.shape[0])]
    if not cover:
        return stats, None
    out = np.zeros(r.shape, dtype=bool)
    for b in range(r.shape[0]):
        if stats[b] > gate.threshold:
            out[b, r[b]] = window_cover(e[b][r[b]], gate.window, gate.threshold)
    return stats, torch.from_numpy(out).to(real_BT.device)


def _edited(
    sae: nn.Module,
    gate: Gate,
    x_BTD: Tensor,
    f_BTK: Tensor,
    edit_BT: Tensor,
    idx_K: Tensor,
    directions_KD: Tensor | None = None,
) -> Tensor:
    value_K = torch.as_tensor(
        gate.values if gate.values is not None else [gate.value] * len(gate.features),
        dtype=f_BTK.dtype,
        device=f_BTK.device,
    )
    if gate.scope == "token":
        df_BTK = value_K - f_BTK
    else:
        df_BTK = torch.where(f_BTK > 0, value_K.expand_as(f_BTK), f_BTK) - f_BTK
    df_BTK = df_BTK.masked_fill(~edit_BT.unsqueeze(-1), 0)
    dx_BTD = df_BTK @ (sae.W_dec[idx_K] if directions_KD is None else directions_KD.to(sae.W_dec.dtype))
    wide = torch.promote_types(x_BTD.dtype, dx_BTD.dtype)
    return x_BTD.to(wide) + dx_BTD.to(wide)


def _cache_is_empty(inputs: dict) -> bool:
    """True when this forward starts a sequence: nothing was in the KV cache when it began (see
    `edit_with_inputs`), and no 2D mask reaches back before its tokens."""
    ids, mask = inputs.get("input_ids"), inputs.get("attention_mask")
    if torch.is_tensor(ids) and torch.is_tensor(mask) and mask.dim() == 2 and mask.shape[1] > ids.shape[-1]:
        return False
    return inputs.get("past_length", 0) == 0


def _check(model: nn.Module, sae: nn.Module, gate: Gate, hook_name: str | None) -> tuple[str, Tensor]:
    return sae_site(model, sae, gate.features, hook_name)


@contextmanager
def gated(
    model: nn.Module,
    sae: nn.Module,
    gate: Gate,
    *,
    hook_name: str | None = None,
    bos_token_id: int | None = None,
    record: list[list[float]] | FiringLog | None = None,
    directions_KD: Tensor | None = None,
    dry_run: bool = False,
) -> Iterator[None]:
    """Install the gated clamp at `sae.hook_name` (or `hook_name`) for every forward inside the block.

    `record`, if given, receives each forward's per-row statistics (calibration, firing rates, tests);
    `directions_KD` replaces the features' decoder rows in the edit (the random-direction control);
    `dry_run` records without ever editing (calibration on the sequences a scorer really forwards)."""
    hook, idx_K = _check(model, sae, gate, hook_name)
    bos = bos_token_id if bos_token_id is not None else getattr(text_config(model), "bos_token_id", None)
    history: dict[str, Tensor] = {}

    def fn(x_BTD: Tensor, seen: dict) -> Tensor:
        if gate.kind == "none" or idx_K.numel() == 0:
            return x_BTD
        ids_BT = seen["input_ids"]
        shape = x_BTD.shape[:-1]
        real_BT = real_tokens(seen.get("attention_mask"), shape, x_BTD.device)
        counted_BT = real_BT.clone()
        if bos is not None and ids_BT is not None and ids_BT.shape == shape:
            counted_BT &= ids_BT.to(x_BTD.device) != bos
        new = {"real": real_BT, "counted": counted_BT, "norm": x_BTD.detach().double().norm(dim=-1)}
        if _cache_is_empty(seen) or not history or history["real"].shape[0] != shape[0]:
            history.clear()
        for key, value in new.items():  # this sequence so far: sinks are judged against its whole history
            history[key] = torch.cat([history[key], value], 1) if key in history else value
        sink_BT = sink_tokens(history["norm"], history["counted"], gate.sink_ratio)[:, -shape[1] :]
        counted_BT &= ~sink_BT
        f_BTK = sae.encode_subset(x_BTD, idx_K)
        e_BT = token_evidence(gate, f_BTK, counted_BT)
        history["e"] = torch.cat([history["e"], e_BT], 1) if "e" in history else e_BT
        stats, cover_BT = _decide(
            gate, history["e"], history["real"], cover=gate.span == "windows" and not dry_run
        )
        if record is not None:
            record.append(stats)
        if dry_run:
            return x_BTD
        fire_B = torch.tensor([s > gate.threshold for s in stats], device=x_BTD.device)
        edit_BT = fire_B[:, None] & counted_BT & (f_BTK > 0).any(-1)
        if cover_BT is not None:
            edit_BT &= cover_BT[:, -shape[1] :]
        if not bool(edit_BT.any()):
            return x_BTD
        return _edited(sae, gate, x_BTD, f_BTK, edit_BT, idx_K, directions_KD)

    with edit_with_inputs(model, hook, fn):
        yield


# --- calibration -----------------------------------------------------------------------------------------


def calibrate_threshold(scores_retain: Sequence[float], fpr: float) -> float:
    """τ with the largest firing rate ≤ `fpr` on these benign scores (fires when score > τ): the
    (⌊fpr·n⌋ + 1)-th largest score, so at most ⌊fpr·n⌋ scores exceed it (fewer only where ties force it)."""
    s = np.sort(np.asarray(scores_retain, dtype=np.float64))[::-1]
    if s.size == 0:
        raise UnlearnError(
            "Calibrating a gate needs at least one retain sequence; pass a non-empty retain set."
        )
    if not 0 <= fpr < 1:
        raise UnlearnError(f"--gate-fpr must lie in [0, 1), got {fpr}.")
    k = int(math.floor(fpr * s.size + 1e-9))
    return float(s[k])


def firing_rate(scores: Sequence[float], threshold: float) -> float:
    s = np.asarray(scores, dtype=np.float64)
    return float((s > threshold).mean()) if s.size else math.nan


def _token_ids(item, tokenizer) -> list[int]:
    from unlearn.eval.prompts import cloze_context, encode_prompt

    text = item if isinstance(item, str) else cloze_context(item.question)
    return encode_prompt(text, tokenizer)


@torch.no_grad()
def sequence_evidence(
    lm,
    sae: nn.Module,
    gate: Gate,
    items: Sequence,
    *,
    hook_name: str | None = None,
    batch_size: int = 16,
) -> list[np.ndarray]:
    """Per item, the real-token evidence of `gate` (its features, evidence kind and weights; BOS first,
    with 0) of texts (BOS + text) or questions (the cloze context `Question: …\nAnswer:` the cloze scorer
    forwards before the answers), from right-padded forwards that stop at the hook layer. One pass serves
    every statistic of gates sharing that evidence (`statistic`)."""
    hook, idx_K = _check(lm.model, sae, gate, hook_name)
    bos = lm.tokenizer.bos_token_id
    seqs = [_token_ids(item, lm.tokenizer) for item in items]
    device = next(lm.model.parameters()).device
    pad = lm.tokenizer.pad_token_id or 0
    out: list[np.ndarray] = [np.zeros(0)] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids_BT, mask_BT = right_padded([seqs[i] for i in batch], pad)
        inputs = {"input_ids": ids_BT.to(device), "attention_mask": mask_BT.to(device)}
        x_BTD = forward_to(lm.model, [hook], **inputs)[hook]
        real_BT = mask_BT.bool().to(x_BTD.device)
        counted_BT = real_BT & (ids_BT.to(x_BTD.device) != bos) if bos is not None else real_BT
        counted_BT &= ~sink_tokens(x_BTD.double().norm(dim=-1), counted_BT, gate.sink_ratio)
        e_BT = token_evidence(gate, sae.encode_subset(x_BTD, idx_K), counted_BT).cpu().numpy()
        for b, i in enumerate(batch):
            out[i] = e_BT[b, : len(seqs[i])]
    return out


def gate_scores(lm, sae: nn.Module, gate: Gate, items: Sequence, **kwargs) -> np.ndarray:
    """Per-item gate statistics (see `sequence_evidence` for what is forwarded); padding-free, so the
    batch size does not matter."""
    evidence = sequence_evidence(lm, sae, gate, items, **kwargs)
    return np.array([statistic(gate, e_T) for e_T in evidence])


def calibrated(gate: Gate, retain_scores: Sequence[float], fpr: float) -> Gate:
    """`gate` with τ calibrated on `retain_scores` for `fpr`, recording the target and the dev rate."""
    tau = calibrate_threshold(retain_scores, fpr)
    return gate.replace(threshold=tau, target_fpr=fpr, measured_fpr={"dev": firing_rate(retain_scores, tau)})
