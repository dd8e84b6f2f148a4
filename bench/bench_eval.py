"""Our letter (or cloze) scorer vs lm-evaluation-harness on the same model and questions.

Each side runs in its own child process so that peak memory is its own. Prints whether the per-question
answers agree, the wall time of each (model load excluded; lm-eval's task setup included, since a user
pays it), the speed ratio, and peak memory (CUDA: max allocated; CPU: peak RSS of the child).

    python bench/bench_eval.py --n 64 --protocol letter [--model gemma-3-270m] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(args: argparse.Namespace) -> dict:
    import torch

    from unlearn.data import load_questions
    from unlearn.eval.lmeval import lmeval_predictions
    from unlearn.eval.scoring import make_letter_scorer, score_cloze, score_letter
    from unlearn.models import load_model

    torch.set_num_threads(args.threads) if args.threads else None
    lm = load_model(args.model, device=args.device)
    questions = load_questions(args.source, limit=args.n)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda = lm.model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if args.side == "ours" and args.protocol == "letter":
        scorer = make_letter_scorer(lm.model, lm.tokenizer, batch_size=args.batch_size)
        pred = score_letter(questions, lm.tokenizer, scorer, chat_template=args.chat)["pred"]
    elif args.side == "ours":
        pred = score_cloze(questions, lm.model, lm.tokenizer, batch_size=args.batch_size)["pred"]
    else:
        pred = lmeval_predictions(lm.model, lm.tokenizer, questions, style=args.protocol,
                                  chat_template=args.chat, batch_size=args.batch_size)["pred"]  # fmt: skip
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (
        (torch.cuda.max_memory_allocated() / 2**20)
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {"side": args.side, "seconds": seconds, "pred": [int(p) for p in pred], "peak_mib": peak,
            "loaded_mib": None if cuda else rss_loaded, "device": str(lm.model.device),
            "answers": [q.answer for q in questions]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--source", default="offline:bio")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--protocol", choices=["letter", "cloze"], default="letter")
    parser.add_argument("--chat", action="store_true", help="letter prompts inside the chat template")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--side", choices=["ours", "lm-eval"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(child(args)))
        return
    runs = {}
    for side in ("ours", "lm-eval"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--side", side]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        runs[side] = json.loads(out.strip().splitlines()[-1])
    ours, theirs = runs["ours"], runs["lm-eval"]
    same = sum(a == b for a, b in zip(ours["pred"], theirs["pred"], strict=True))
    acc = lambda r: sum(p == a for p, a in zip(r["pred"], r["answers"], strict=True)) / len(r["answers"])  # noqa: E731
    print(
        f"model {args.model} on {ours['device']}, {args.protocol} protocol, {len(ours['pred'])} questions of {args.source}"
    )
    print(f"same answers: {same}/{len(ours['pred'])}   acc ours {acc(ours):.3f}  lm-eval {acc(theirs):.3f}")
    print(f"time ours {ours['seconds']:.2f} s   lm-eval {theirs['seconds']:.2f} s   "
          f"speed-up {theirs['seconds'] / ours['seconds']:.1f}x")  # fmt: skip
    unit = "CUDA max allocated" if ours["loaded_mib"] is None else "peak RSS"
    extra = (
        ""
        if ours["loaded_mib"] is None
        else f" (after model load: {ours['loaded_mib']:.0f} / {theirs['loaded_mib']:.0f} MiB)"
    )
    print(f"{unit}: ours {ours['peak_mib']:.0f} MiB   lm-eval {theirs['peak_mib']:.0f} MiB{extra}")


if __name__ == "__main__":
    main()
