"""Cloze rows past the sliding window: packed with a sliding mask per layer kind vs one row per choice.

The dilution check prepends N tokens of retain text to each forget question; on Gemma 3 270M (512-token
sliding window) a packed N = 400 row is longer than the window. A decoder that takes one mask for all its
layers needs one sequence per choice there (what the scorer did before, and still does for such models);
Gemma 2 / 3 take one 4D mask per layer kind, so the row stays packed (`scoring.Head.inputs`). Prints how
many rows pass the window, whether the two give the same answers, the largest log-likelihood difference and
the speed ratio, measured in this one run.

    python bench/bench_long_cloze.py [--n 40] [--prefix 400] [--model gemma-3-270m]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--source", default="offline:bio@test")
    parser.add_argument("--filler", default="offline:retain-statements")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--prefix", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import numpy as np
    import torch

    import unlearn.eval.scoring as scoring
    from unlearn.clamp.dilution import prefixed_sets
    from unlearn.clamp.feature_checks import iter_sources
    from unlearn.data import load_questions
    from unlearn.models import load_model

    lm = load_model(args.model)
    questions = load_questions(args.source, limit=args.n)
    qs = prefixed_sets(lm, questions, iter_sources(args.filler), [args.prefix])[args.prefix]
    window = scoring.text_config(lm.model).sliding_window

    def run(per_kind: bool) -> tuple[dict, float, int]:
        real = scoring.layer_mask_types
        scoring.layer_mask_types = real if per_kind else (lambda model: ())
        try:
            rows = scoring.cloze_rows(qs, lm.tokenizer, lm.model)
            start = time.perf_counter()
            with torch.inference_mode():
                out = scoring.score_cloze(qs, lm.model, lm.tokenizer, batch_size=args.batch_size)
            return out, time.perf_counter() - start, sum(len(r[0]) for r in rows)
        finally:
            scoring.layer_mask_types = real

    plain, t_plain, tok_plain = run(per_kind=False)
    packed, t_packed, tok_packed = run(per_kind=True)
    longer = sum(len(r[0]) > window for r in scoring.cloze_rows(qs, lm.tokenizer, lm.model))
    print(f"{len(qs)} questions with {args.prefix} prefix tokens; sliding window {window}; "
          f"{longer} packed rows longer than the window")  # fmt: skip
    print(f"same answers: {bool((plain['pred'] == packed['pred']).all())}; "
          f"max |Δ log-likelihood| {np.abs(plain['ll'] - packed['ll']).max():.2e} nats")  # fmt: skip
    print(
        f"tokens forwarded: per choice {tok_plain}, packed {tok_packed} ({tok_plain / tok_packed:.2f}x fewer)"
    )
    print(f"wall: per choice {t_plain:.1f} s, packed {t_packed:.1f} s -> {t_plain / t_packed:.2f}x faster")


if __name__ == "__main__":
    main()
