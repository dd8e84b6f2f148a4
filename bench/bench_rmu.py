"""RMU step cost on the embedded Gemma 3 270M: our lean trainer vs the plain two-copies algorithm.

Lean (`unlearn.rmu.train.RMUTrainer`): one model; forwards stop at `layers[L]`; the frozen activations
come from the same truncated forward with the 3 original `down_proj` matrices swapped in.
Naive (the WMDP reference code's structure): an updated model and a `copy.deepcopy` frozen model, full
forwards (every layer and the 262k-token output layer) with `output_hidden_states`.

Each mode runs in its own subprocess (clean memory accounting): load the model, then measure the time of
each step (median after one warm-up) and the peak RSS above the loaded model (sampled every 5 ms), which
covers the second copy, optimiser state and activations. Both see the same batches; the first step's
losses are compared as a sanity check.

    nice -n 10 python bench/bench_rmu.py                      # layer 6, batch 4 x 128 tokens, 4 steps
    nice -n 10 python bench/bench_rmu.py --layer 3 --steps 6
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import threading
import time


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory while running, sampled by a background thread."""

    def __init__(self, every: float = 0.005):
        self.every, self.peak, self._stop = every, rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def run_mode(mode: str, args) -> dict:
    import torch

    from unlearn.models import load_model
    from unlearn.rmu.train import RMUTrainer, rmu_mse, steering_vectors, text_batches, tokenize

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.preset)
    dev, n = lm.model.device, args.steps + 1
    forget = [
        tokenize(lm.tokenizer, b, args.max_length, dev) for b in text_batches(args.forget, args.batch_size, n)
    ]
    retain = [
        tokenize(lm.tokenizer, b, args.max_length, dev) for b in text_batches(args.retain, args.batch_size, n)
    ]
    L = args.layer
    cvec = steering_vectors(lm.model.config.hidden_size, args.steering_coeff, 1, seed=42)[0]
    base = rss_bytes()
    times, losses = [], []
    with PeakRSS() as peak:
        if mode == "lean":
            trainer = RMUTrainer(
                lm.model, layer=L, update_layers=[L - 2, L - 1, L], control_vecs=[cvec], alpha=args.alpha,
                mask_padding=args.mask_padding,
            )  # fmt: skip

            def step(f_in, r_in):
                s = trainer.step(f_in, r_in)
                return s.forget, s.retain
        else:
            updated, frozen = lm.model, copy.deepcopy(lm.model)
            named = dict(updated.named_parameters())
            params = [
                named[f"model.layers.{i}.mlp.down_proj.weight"].requires_grad_(True)
                for i in (L - 2, L - 1, L)
            ]
            opt = torch.optim.AdamW(params, lr=5e-5, eps=1e-6, weight_decay=0.0)

            def step(f_in, r_in):
                mf = f_in["attention_mask"] if args.mask_padding else None
                mr = r_in["attention_mask"] if args.mask_padding else None
                h_f = updated(**f_in, output_hidden_states=True).hidden_states[L + 1]
                lf = rmu_mse(h_f, cvec, mf)
                h_r = updated(**r_in, output_hidden_states=True).hidden_states[L + 1]
                with torch.no_grad():
                    h_0 = frozen(**r_in, output_hidden_states=True).hidden_states[L + 1]
                lr_ = args.alpha * rmu_mse(h_r, h_0, mr)
                opt.zero_grad(set_to_none=True)
                (lf + lr_).backward()
                opt.step()
                return lf.item(), lr_.item()

        for f_in, r_in in zip(forget, retain, strict=True):
            t = time.perf_counter()
            losses.append(step(f_in, r_in))
            times.append(time.perf_counter() - t)
    return {
        "mode": mode,
        "step_s": statistics.median(times[1:]) if len(times) > 1 else times[0],
        "steps_s": times,
        "extra_mb": (peak.peak - base) / 2**20,
        "model_mb": base / 2**20,
        "first_losses": losses[0],
        "tokens": [int(forget[0]["input_ids"].numel()), int(retain[0]["input_ids"].numel())],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gemma-3-270m")
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=4, help="timed steps after one warm-up step")
    p.add_argument("--steering-coeff", type=float, default=20.0)
    p.add_argument("--alpha", type=float, default=100.0)
    p.add_argument("--mask-padding", action="store_true")
    p.add_argument("--forget", default="offline:bio-forget")
    p.add_argument("--retain", default="offline:retain")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--mode", choices=["lean", "naive"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print("RESULT " + json.dumps(run_mode(args.mode, args)), flush=True)
        return

    results = {}
    for mode in ("lean", "naive"):
        out = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--mode", mode], capture_output=True, text=True
        )
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
        results[mode] = json.loads(line.removeprefix("RESULT "))
    lean, naive = results["lean"], results["naive"]
    print(f"embedded {args.preset}, layer {args.layer}, batch {args.batch_size} x {args.max_length} tokens "
          f"(forget/retain tokens {lean['tokens']}), torch threads {args.threads or 'default'}")  # fmt: skip
    print(f"{'':8}{'step s (median)':>16}{'extra MB':>10}   steps s")
    for r in (lean, naive):
        print(
            f"{r['mode']:8}{r['step_s']:>16.2f}{r['extra_mb']:>10.0f}   {[round(s, 2) for s in r['steps_s']]}"
        )
    print(f"model RSS after load: {lean['model_mb']:.0f} MB")
    print(f"speed-up per step: {naive['step_s'] / lean['step_s']:.1f}x (target >= 3x)")
    print(f"extra memory lean / naive: {lean['extra_mb'] / naive['extra_mb']:.2f} (target <= 0.6)")
    print(f"first-step losses lean {lean['first_losses']} vs naive {naive['first_losses']}")


if __name__ == "__main__":
    main()
