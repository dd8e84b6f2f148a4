"""Cost of the clamp hook and throughput of the feature-statistics pass, on the embedded Gemma 3 270M.

(a) plain forward vs forward with the 20-feature clamp hook at the SAE's hook point (target ≤ 1.10×);
(b) select-features work per batch (forward stopping at the hook + SAE encode + stats) vs a full-model
    forward, in tokens/s (target ≥ 2×, thanks to stopping at the SAE layer).

Uses the shipped SAE when `data/saes/gemma-3-270m-res-l6` exists, else a random JumpReLU SAE of the same
kind. Run: `nice -n 10 python bench/bench_intervene.py [--repeats 5] [--batch 8] [--seq 128]`.
Timings are medians over interleaved repeats (the machine is shared; interleaving spreads the noise).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from unlearn.clamp.feature_stats import FeatureStats, token_chunks
from unlearn.clamp.intervene import EditStats, feature_edit, random_rotation
from unlearn.data import iter_texts
from unlearn.hooks import forward_to, hook_width
from unlearn.models import load_model
from unlearn.paths import resolve_path
from unlearn.sae.loaders import load_sae
from unlearn.sae.model import SAE


def get_sae(preset, d_model: int) -> tuple[SAE, str]:
    path = resolve_path(preset.sae)
    if path.exists():
        return load_sae(str(path)), str(path)
    g = torch.Generator().manual_seed(0)
    sae = SAE(d_model, 2048, "jumprelu", hook_name=preset.hook_point)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_model, 2048, generator=g) / d_model**0.5)
        sae.W_dec.copy_(sae.W_enc.T)
        sae.threshold.fill_(1.0)
    return sae.requires_grad_(False), "random jumprelu 2048"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()

    lm = load_model()
    model, tok, preset = lm.model, lm.tokenizer, lm.preset
    hook = preset.hook_point
    sae, sae_name = get_sae(preset, hook_width(model, hook))
    stream = token_chunks(
        iter_texts("offline:retain"), tok, max_length=args.seq, max_tokens=args.batch * args.seq * 8
    )
    chunks = [c for c in stream if len(c) == args.seq]
    ids = torch.tensor(chunks[: args.batch])
    mask = torch.ones_like(ids)
    n_tok = ids.numel()
    features = list(range(0, 20 * 7, 7))  # 20 features spread over the dictionary
    stats = FeatureStats.empty(sae.d_sae)

    def plain():
        model(input_ids=ids, attention_mask=mask, logits_to_keep=1, use_cache=False)

    def hooked():
        with feature_edit(model, sae, features, "clamp", -20.0, hook_name=hook):
            plain()

    dirs_KD = sae.W_dec[features] @ random_rotation(sae.d_in, dtype=sae.W_dec.dtype)

    def hooked_control():  # what a random-direction control point runs: rotated rows + edit-size stats
        with feature_edit(model, sae, features, "clamp", -20.0, hook_name=hook, directions_KD=dirs_KD,
                   stats=EditStats()):  # fmt: skip
            plain()

    def full_all_logits():
        model(input_ids=ids, attention_mask=mask, use_cache=False)

    def select_step():
        x = forward_to(model, [hook], input_ids=ids, attention_mask=mask)[hook]
        keep = ids != tok.bos_token_id
        stats.update(sae.encode(x[keep]))

    jobs = {"plain": plain, "hooked": hooked, "hooked (control+stats)": hooked_control, "select": select_step,
            "full (all logits)": full_all_logits}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in jobs}
    with torch.inference_mode():
        for fn in jobs.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in jobs.items():
                times[name].append(timed(fn))
        x = forward_to(model, [hook], input_ids=ids)[hook]  # unhooked: how often the 20 features fire
        fired = (sae.encode_subset(x, features) > 0).float().mean()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"model: {lm.name} ({model.dtype}), {torch.get_num_threads()} threads; SAE: {sae_name}; hook {hook}"
    )
    print(f"batch {args.batch}x{args.seq} = {n_tok} tokens, {args.repeats} repeats, medians:")
    for k, v in med.items():
        print(f"  {k:<24} {v * 1000:8.1f} ms  {n_tok / v:8.0f} tok/s")
    print(f"(a) clamp overhead (20 features, {fired:.1%} of entries active): "
          f"{med['hooked'] / med['plain']:.3f}x  (target <= 1.10); random-direction control with edit-size "
          f"stats: {med['hooked (control+stats)'] / med['plain']:.3f}x")  # fmt: skip
    print(f"(b) select-features vs full forward (last logit only): {med['plain'] / med['select']:.2f}x tokens/s; "
          f"vs full forward with all logits: {med['full (all logits)'] / med['select']:.2f}x  (target >= 2)")  # fmt: skip


if __name__ == "__main__":
    main()
