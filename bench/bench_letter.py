"""The letter protocol's known-subset computation (24 answer orders per question, Farrell et al. arXiv
2410.19278 / SAEBench) three ways on the same model and questions: our packed scorer (a question's orders
behind one copy of their shared prefix), our unpacked scorer (every order its own sequence) and
lm-evaluation-harness (each order as its own lm-eval document). Prints the tokens each of ours forwards,
wall times and ratios measured in this one run, and whether the known subsets and every per-order pick agree.

    python bench/bench_letter.py --n 16 [--model gemma-3-270m] [--source offline:bio] [--chat]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass


@dataclass
class Permuted:
    """A question with its choices in one order (what lm-eval is given per order)."""

    question: str
    choices: list[str]
    answer: int
    subject: str | None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--source", default="offline:bio")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--chat", action="store_true", help="letter prompts inside the chat template")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--skip-lm-eval", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import torch

    from unlearn.data import load_questions
    from unlearn.eval.lmeval import lmeval_predictions
    from unlearn.eval.scoring import ALL_ORDERS, letter_prompts, make_letter_scorer, score_letter
    from unlearn.models import load_model

    lm = load_model(args.model, device=args.device)
    questions = load_questions(args.source, limit=args.n)
    grouped = letter_prompts(questions, lm.tokenizer, chat_template=args.chat, orders=ALL_ORDERS)
    runs, tokens = {}, {}
    for name, packed in (("packed", True), ("unpacked", False)):
        scorer = make_letter_scorer(lm.model, lm.tokenizer, batch_size=args.batch_size, packed=packed)
        tokens[name] = sum(len(r[0]) for r in scorer.rows(grouped))
        start = time.perf_counter()
        scores = scorer.score_groups(grouped)  # every order's letter scores: the known pass's forwards
        if lm.model.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        # the known rule on those scores (score_letter's own reduction, no second forward)
        out = score_letter(questions, lm.tokenizer, lambda prompts, s=scores: s, chat_template=args.chat,
                           orders=ALL_ORDERS)  # fmt: skip
        runs[name] = (seconds, out["correct"], scores)
    if not args.skip_lm_eval:
        permuted = [Permuted(q.question, [q.choices[i] for i in o], o.index(q.answer), q.subject)
                    for q in questions for o in ALL_ORDERS]  # fmt: skip
        start = time.perf_counter()
        pred = lmeval_predictions(lm.model, lm.tokenizer, permuted, style="letter", chat_template=args.chat,
                                  batch_size=args.batch_size)["pred"]  # fmt: skip
        correct = (np.asarray(pred) == np.array([p.answer for p in permuted])).reshape(len(questions), 24)
        runs["lm-eval"] = (time.perf_counter() - start, correct, None)

    n = len(questions)
    print(f"model {args.model} on {lm.model.device}, letter protocol x 24 orders, {n} questions of {args.source}"
          f", chat template {'on' if args.chat else 'off'}, batch {args.batch_size} prompts")  # fmt: skip
    print(f"tokens forwarded: packed {tokens['packed']}  unpacked {tokens['unpacked']}  "
          f"({tokens['unpacked'] / tokens['packed']:.2f}x fewer packed)")  # fmt: skip
    base_t, base_correct, base_scores = runs["packed"]
    diff = (runs["unpacked"][2] - base_scores).abs().max().item()
    print(f"packed vs unpacked: max |Δ letter logit| {diff:.2e}")
    for name, (seconds, correct, _) in runs.items():
        known = correct.all(axis=1)
        same_known = int((known == base_correct.all(axis=1)).sum())
        same_picks = int((correct == base_correct).sum())
        print(f"{name:>9}: {seconds:7.2f} s  ({seconds / base_t:5.2f}x packed)  known {int(known.sum())}/{n}  "
              f"same known flag {same_known}/{n}  same per-order correctness {same_picks}/{n * 24}")  # fmt: skip


if __name__ == "__main__":
    main()
