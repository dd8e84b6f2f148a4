"""Truncated forward vs full forward for layer-6 activations of the embedded model, in one run.

Activation statistics, SAE training and RMU need activations at one layer only; `forward_to` stops
after it instead of running the remaining layers and the 262k-token output head. Target: >= 2x.

    python bench/bench_hooks.py [--preset gemma-3-270m] [--batch 8] [--seq 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from unlearn.hooks import capture, forward_to
from unlearn.models import load_model


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gemma-3-270m")
    parser.add_argument("--hook", default="blocks.6.hook_resid_post")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    lm = load_model(args.preset)
    torch.manual_seed(0)
    ids = torch.randint(10, lm.tokenizer.vocab_size, (args.batch, args.seq), device=lm.model.device)
    ids[:, 0] = lm.tokenizer.bos_token_id
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def full():
        with capture(lm.model, [args.hook]) as acts:
            lm.model(**inputs, use_cache=False)
        return acts[args.hook]

    def truncated():
        return forward_to(lm.model, [args.hook], **inputs)[args.hook]

    with torch.no_grad():
        assert torch.equal(full(), truncated()), "truncated forward changed the activations"
        t_full = median_seconds(full, args.repeats)
        t_trunc = median_seconds(truncated, args.repeats)
    tokens = args.batch * args.seq
    print(
        f"model {args.preset}, hook {args.hook}, batch {args.batch}x{args.seq}, {torch.get_num_threads()} threads"
    )
    print(f"full forward      {t_full * 1e3:8.1f} ms  {tokens / t_full:8.0f} tok/s")
    print(f"truncated forward {t_trunc * 1e3:8.1f} ms  {tokens / t_trunc:8.0f} tok/s")
    print(f"speed-up          {t_full / t_trunc:8.2f}x  (target >= 2x)")


if __name__ == "__main__":
    main()
