"""Per-point cost of a sweep with the hook-layer cache vs a full evaluation, on the embedded Gemma 3 270M.

The same point (the clamp of the 20 SAE features most often active on the forget questions) on the same
questions, in one run, interleaved:

(a) a full evaluation of the point (`EvalSuite.run` with the clamp installed, no cache) vs the same call
    on the cached prefix (`unlearn.eval.hook_cache`, warmed by one earlier point): target
    ratio ≤ (layers after the hook / all layers) + 0.10; the answers must be bit-identical;
(b) the point as `intervene` runs it (`Reuse`: a forward to the hook finds the touched questions, only
    they are scored, or, with the cache and most questions touched, all of them on the cached prefix),
    with and without the cache;
(c) where the time of (a)'s cached pass goes: the layers after the hook, the output head (`Head.logits`),
    and the rest (embedding, masks, the scorer's own work), beside the full pass's prefix layers.

Run: `nice -n 10 python bench/bench_hook_cache.py [--limit 40] [--repeats 3] [--threads 1]` (on a shared
machine, one thread keeps the CPU-time ratio free of other processes' noise: OpenMP spin-waits count
as CPU time).
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import numpy as np
import torch

from unlearn.clamp.intervene import feature_edit
from unlearn.eval import scoring
from unlearn.eval.hook_cache import cached_layer, hook_layer_cache
from unlearn.eval.suite import (
    Reuse,
    eval_config_from_preset,
    forward_batches,
    forwarded_sequences,
    prepare_eval,
)
from unlearn.hooks import decoder_layers, forward_to
from unlearn.models import load_model
from unlearn.paths import resolve_path
from unlearn.sae.loaders import load_sae


def costed(fn) -> tuple[tuple[float, float], object]:
    """((wall s, CPU s of this process), result): on a shared machine the CPU time is the stable cost."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return (time.perf_counter() - wall, time.process_time() - cpu), out


def most_active(model, tok, suite, sae, hook, n: int) -> list[int]:
    """The n features most often active on the forget questions' sequences (BOS excluded)."""
    counts = torch.zeros(sae.d_sae)
    for task in suite.tasks:
        if task.role != "forget":
            continue
        seqs = forwarded_sequences(model, tok, task.questions, suite.cfg, chat_template=suite.chat_template)
        for inputs, real_BT, _ in forward_batches(model, tok, seqs, suite.cfg.batch_size):
            x = forward_to(model, [hook], **inputs)[hook]
            keep = real_BT & (inputs["input_ids"] != tok.bos_token_id)
            counts += (sae.encode(x[keep]) > 0).sum(0).float()
    return counts.topk(n).indices.tolist()


@contextmanager
def segment_timer(layers, first: int, last: int, into: list[float]):
    """Adds the CPU time from entering layers[first] to leaving layers[last] to `into`, per forward."""
    start = {}
    pre = layers[first].register_forward_pre_hook(lambda *_: start.__setitem__("t", time.process_time()))
    post = layers[last].register_forward_hook(lambda *_: into.append(time.process_time() - start["t"]))
    try:
        yield
    finally:
        pre.remove(), post.remove()


@contextmanager
def head_timer(into: list[float]):
    original = scoring.Head.logits

    def logits(self, *args, **kwargs):
        (_, t), out = costed(lambda: original(self, *args, **kwargs))
        into.append(t)
        return out

    scoring.Head.logits = logits
    try:
        yield
    finally:
        scoring.Head.logits = original


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=40, help="questions per source")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads; 1 makes CPU time the work itself on a shared machine (no spin-waits)")  # fmt: skip
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load_model()
    model, tok, preset = lm.model, lm.tokenizer, lm.preset
    hook = preset.hook_point
    sae = load_sae(str(resolve_path(preset.sae)))
    suite = prepare_eval(lm, eval_config_from_preset(preset, known_only=True, limit=args.limit))
    layers = decoder_layers(model)
    k, n_layers = cached_layer(hook), len(layers)
    target = (n_layers - 1 - k) / n_layers + 0.10
    with torch.inference_mode():
        feats = most_active(model, tok, suite, sae, hook, args.features)
        base = suite.run(model)  # the unhooked frame: from the known-subset pass, no forward

        def point():
            return feature_edit(model, sae, feats, "clamp", -20.0, hook_name=hook)

        def full():
            with point():
                return suite.run(model).questions

        def swept():
            return suite.run(model, reuse=Reuse(base.questions, lambda live: point(), hook)).questions

        times = {"full": [], "full, cached": [], "sweep point": [], "sweep point, cached": []}
        for _ in range(args.repeats):
            t, ref = costed(full)
            times["full"].append(t)
            t, _ = costed(swept)
            times["sweep point"].append(t)
            with hook_layer_cache(model, hook) as cache:
                full()  # an earlier point, untimed: every batch's prefix is stored (misses)
                t, got = costed(full)
                times["full, cached"].append(t)
                t, _ = costed(swept)
                times["sweep point, cached"].append(t)
            ll = [c for c in ref.columns if c.startswith("ll_")]
            assert np.array_equal(got[ll].to_numpy(), ref[ll].to_numpy()), "cached answers differ"
        stats = cache.stats.as_dict()
        touched = (ref[ll].to_numpy() != base.questions[ll].to_numpy()).any(1).mean()
        # (c) where the time goes: instrumented passes (not part of the ratios above)
        after, prefix, head_full, head_cached = [], [], [], []
        with segment_timer(layers, 0, k, prefix), head_timer(head_full):
            (_, t_full_inst), _ = costed(full)
        with hook_layer_cache(model, hook):
            full()
            with segment_timer(layers, k + 1, n_layers - 1, after), head_timer(head_cached):
                (_, t_cached_inst), _ = costed(full)
    wall = {name: statistics.median(w for w, _ in v) for name, v in times.items()}
    med = {name: statistics.median(c for _, c in v) for name, v in times.items()}  # CPU time
    n_q = sum(len(t.questions) for t in suite.tasks)
    print(f"model: {lm.name} ({model.dtype}), {torch.get_num_threads()} threads; hook {hook} (cached through "
          f"layer {k} of 0..{n_layers - 1}); {n_q} questions ({suite.cfg.protocol}, split {suite.cfg.split}, "
          f"batch {suite.cfg.batch_size}); {len(feats)} features clamped at -20, touching {touched:.0%} of "
          f"questions; {args.repeats} repeats, medians (CPU time of this process; wall time beside it):")  # fmt: skip
    for name, v in med.items():
        print(f"  {name:<22} {v:8.2f} s CPU  {wall[name]:8.2f} s wall")
    ratio = med["full, cached"] / med["full"]
    paired = ", ".join(
        f"{c / f:.3f}" for (_, c), (_, f) in zip(times["full, cached"], times["full"], strict=True)
    )
    print(f"(a) per-point cost, cached / full evaluation: {ratio:.3f} CPU ({wall['full, cached'] / wall['full']:.3f} "
          f"wall; per repeat {paired})  (target <= {target:.3f} = {n_layers - 1 - k}/{n_layers} layers after the "
          f"hook + 0.10); answers bit-identical: yes")  # fmt: skip
    print(f"(b) a sweep point as intervene runs it (Reuse), cached / uncached: "
          f"{med['sweep point, cached'] / med['sweep point']:.3f}; vs the full evaluation: uncached "
          f"{med['sweep point'] / med['full']:.3f}, cached {med['sweep point, cached'] / med['full']:.3f} (CPU)")  # fmt: skip
    print(f"    cache counters of the last repeat: {stats}")
    s_after, s_prefix, s_hf, s_hc = (sum(x) for x in (after, prefix, head_full, head_cached))
    print(f"(c) CPU time: full pass {t_full_inst:.2f} s: layers 0..{k} {s_prefix:.2f} s ({s_prefix / t_full_inst:.0%}), output "
          f"head {s_hf:.2f} s ({s_hf / t_full_inst:.0%})")  # fmt: skip
    rest = t_cached_inst - s_after - s_hc
    print(f"    cached pass {t_cached_inst:.2f} s: layers {k + 1}..{n_layers - 1} {s_after:.2f} s "
          f"({s_after / t_full_inst:.0%} of the full pass), output head {s_hc:.2f} s ({s_hc / t_full_inst:.0%}), "
          f"the rest (embedding, masks, scorer) {rest:.2f} s ({rest / t_full_inst:.0%})")  # fmt: skip


if __name__ == "__main__":
    main()
