"""Checks that a feature selection is about the topic: matched random controls and topic detection.

- `match_controls`: for each selected feature, a random non-selected feature with the nearest firing
  frequency on the selection text (seeded). Clamping those, the same way, is the control that separates
  "these features are about biology" from "any edit this frequent and this large hurts" (the issue the
  SAEBench unlearning eval, Karvonen et al. 2025, arXiv 2503.09532, guards against with its retain
  metrics; here the control is explicit).
- `selection_auroc`: held-out forget vs retain questions scored by the summed activation of the selected
  features over their tokens; AUROC (Mann-Whitney) says how well the selection detects the topic.
- `measure_features`: typical activations and controls for explicit feature ids, on a preset's text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from unlearn.clamp.feature_stats import FeatureStats, accumulate, summed_acts, token_chunks
from unlearn.data import iter_texts, split_part
from unlearn.errors import UnlearnError
from unlearn.stats import auroc

CONTROL_RULE = (
    "per selected feature (in rank order), a random unused non-selected feature with the nearest firing "
    "frequency on forget + retain selection text"
)


def as_sources(source: str | Sequence[str]) -> list[str]:
    """A text source or a list of them (read in order), as a list."""
    return [source] if isinstance(source, str) else list(source)


def iter_sources(source: str | Sequence[str]) -> Iterator[str]:
    for one in as_sources(source):
        yield from iter_texts(one)


def match_controls(
    freq_F: Tensor, selected: Sequence[int], *, seed: int = 0, exclude: Sequence[int] = ()
) -> list[int]:
    """One control per selected feature, disjoint from the selection, from `exclude` (other topics'
    features and controls, so merged topics' controls never collide) and from each other: among unused
    features, those whose frequency is nearest the selected one's; ties drawn at random."""
    rng = np.random.default_rng(seed)
    freq = freq_F.detach().double().cpu().numpy()
    used = np.zeros(len(freq), dtype=bool)
    used[list(selected)] = True
    used[list(exclude)] = True
    out: list[int] = []
    for i in selected:
        free = np.flatnonzero(~used)
        if not len(free):
            break
        dist = np.abs(freq[free] - freq[i])
        j = int(rng.choice(free[dist == dist.min()]))
        used[j] = True
        out.append(j)
    return out


def control_info(
    forget: FeatureStats, retain: FeatureStats, ids: list[int], *, seed: int = 0, exclude: Sequence[int] = ()
) -> dict:
    """Typical activations of `ids` and their matched controls (none in `exclude`), as saved in features.json.

    A typical activation μ_i is the mean activation where active on forget text; a control that never
    fires there takes its mean over forget + retain text instead."""
    fires_F = forget.fire_count_F + retain.fire_count_F
    combined_F = fires_F / max(forget.n_tokens + retain.n_tokens, 1)
    mean_all_F = (forget.act_sum_F + retain.act_sum_F) / fires_F.clamp(min=1)
    typical_F = torch.where(forget.fire_count_F > 0, forget.mean_act_F, mean_all_F)
    controls = match_controls(combined_F, ids, seed=seed, exclude=exclude)
    return {
        "typical_activation": [float(forget.mean_act_F[i]) for i in ids],
        "controls": controls,
        "control_typical_activation": [float(typical_F[j]) for j in controls],
        "control_freq": [float(combined_F[j]) for j in controls],
        "selected_freq": [float(combined_F[i]) for i in ids],
        "control_seed": seed,
        "control_rule": CONTROL_RULE,
    }


def held_out_sources(preset, topic_text: str | Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """Held-out forget and retain questions for a topic's detection AUROC, each on its `@test` split.

    Forget: the question set the topic's selection text reads on `@dev` (`questions:offline:chem@dev` ->
    `offline:chem@test`), else the preset's first evaluation forget source; retain: the preset's
    evaluation retain sources."""
    ev = preset.eval if preset else {}

    def test_split(src: str) -> str:
        return src if split_part(src)[1] else f"{src}@test"

    texts = [topic_text] if isinstance(topic_text, str) else list(topic_text)
    own = [split_part(t.removeprefix("questions:"))[0] for t in texts if t.startswith("questions:")]
    forget = [f"{own[0]}@test"] if own else [test_split(s) for s in ev.get("forget", [])[:1]]
    return forget, [test_split(s) for s in ev.get("retain", [])]


def question_chunks(sources: Sequence[str], tokenizer, max_length: int) -> list[list[int]]:
    """One BOS-led token chunk per question (cut at `max_length`), in source order."""
    texts = [t for src in sources for t in iter_texts(f"questions:{src}")]
    if not texts:
        raise UnlearnError(f"Question source(s) {', '.join(sources)} yielded no questions.")
    bos = tokenizer.bos_token_id
    body = max_length - (bos is not None)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [([bos] if bos is not None else []) + row[:body] for row in ids]


def selection_auroc(
    lm, sae, hook: str, ids: list[int], forget: Sequence[str], retain: Sequence[str], *,
    max_length: int = 256, batch_tokens: int = 2048, top: Sequence[int] = (10, 20),
) -> dict:  # fmt: skip
    """AUROC of forget vs retain questions scored by the selected features' summed activation (all of
    them, and the top-n for each n in `top`), BOS excluded."""
    tok = lm.tokenizer
    kw = {"pad_id": tok.pad_token_id if tok.pad_token_id is not None else 0, "bos_id": tok.bos_token_id,
          "batch_tokens": batch_tokens}  # fmt: skip
    if not ids:
        return {"auroc": None, "forget": list(forget), "retain": list(retain)}
    pos_QK = summed_acts(lm.model, sae, hook, question_chunks(forget, tok, max_length), ids, **kw)
    neg_QK = summed_acts(lm.model, sae, hook, question_chunks(retain, tok, max_length), ids, **kw)
    by_n = {str(n): auroc(pos_QK[:, :n].sum(1), neg_QK[:, :n].sum(1)) for n in top if n < len(ids)}
    return {"auroc": auroc(pos_QK.sum(1), neg_QK.sum(1)), "auroc_top": by_n, "forget": list(forget),
            "retain": list(retain), "n_forget": len(pos_QK), "n_retain": len(neg_QK)}  # fmt: skip


def measure_features(
    lm, sae, hook: str, preset, topic: str, ids: list[int], *, seed: int = 0, max_tokens: int = 20_000,
    max_length: int = 128, batch_tokens: int = 2048,
) -> dict:  # fmt: skip
    """`control_info` for explicit feature ids, counted on the preset's selection text for `topic`
    (`max_tokens` per side: a quick pass, for `intervene --feature-ids` without a selection)."""
    forget_src = preset.select.get("forget_text", {}).get(topic)
    retain_src = preset.select.get("retain_text")
    if not forget_src or not retain_src:
        raise UnlearnError(
            f"Preset {preset.name} names no selection text for topic {topic!r}; pass --features."
        )
    tok = lm.tokenizer
    kw = {"pad_id": tok.pad_token_id if tok.pad_token_id is not None else 0, "bos_id": tok.bos_token_id,
          "batch_tokens": batch_tokens}  # fmt: skip
    stats = {}
    for side, src in (("forget", forget_src), ("retain", retain_src)):
        chunks = list(token_chunks(iter_sources(src), tok, max_length=max_length, max_tokens=max_tokens))
        if not chunks:
            raise UnlearnError(f"Text source {src!r} yielded no text.")
        stats[side] = accumulate(lm.model, sae, hook, chunks, **kw)
    return control_info(stats["forget"], stats["retain"], ids, seed=seed)
