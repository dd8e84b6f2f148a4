"""Full-size dress rehearsal on CPU: a random-weight Gemma 2 built from gemma-2-2b-it's real architecture
(`data/configs/gemma-2-2b-it.yaml`), a random JumpReLU SAE written in Gemma Scope's exact `params.npz`
layout (2304 x 16384) and read back by our loader, run through the gemma-2-2b-it preset's letter protocol
(chat template, known subset over 24 answer orders, packed) and one intervene point (clamp -20 on the SAE's
most active features, the preset's `absolute` unit) on a few offline questions.

Records peak RSS (`resource.getrusage`) and seconds per forwarded token, and projects the preset's full run
(WMDP-bio 1273 questions + the 4 MMLU subjects' 725 test questions) on one GPU:

    tokens  = questions x (packed known-pass tokens per question + 2 x one-order prompt tokens per question)
              (the known subset, the baseline evaluation and one intervene point; token counts per
              question measured here on the offline questions, a proxy for WMDP/MMLU's)
    seconds = tokens x FLOPs per token / (GPU bf16 throughput x utilisation)
    FLOPs per token = 2 x non-embedding parameters + attention scores (4 x layers x d_attn x mean row length)

The tokenizer is the embedded Gemma 3 270M's (SentencePiece, ids asserted < 256000, Gemma's chat template
as in `tests/conftest.py`): no Gemma 2 tokenizer is available offline, and its token counts are close to
Gemma 2's (the tests' 400-token BPE would inflate them ~2x).

    python bench/bench_fullsize.py [--questions 2] [--layers 26] [--gpu-tflops 989 --utilisation 0.35]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "data" / "configs" / "gemma-2-2b-it.yaml"
WMDP_BIO, MMLU_4 = 1273, 204 + 100 + 198 + 223
"""Question counts: WMDP-bio; MMLU test of high_school_us_history, college_computer_science,
high_school_geography, human_aging (the preset's retain subjects)."""


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def build_model(n_layers: int | None = None, seed: int = 0):
    """Random-weight Gemma2ForCausalLM from the stored config (fp32, eager attention as the preset)."""
    import torch
    import yaml
    from transformers import Gemma2Config, Gemma2ForCausalLM

    raw = yaml.safe_load(CONFIG.read_text())
    arch = {k: v for k, v in raw.items() if k not in ("model_type", "sae_width")}
    if n_layers is not None:
        arch["num_hidden_layers"] = n_layers
    torch.manual_seed(seed)
    config = Gemma2Config(**arch, attn_implementation="eager")
    with torch.device("cpu"):
        model = Gemma2ForCausalLM(config)
    return model.eval(), raw["sae_width"]


def write_gemma_scope_npz(path: Path, d_in: int, d_sae: int, seed: int = 0) -> Path:
    """A random JumpReLU SAE in Gemma Scope's `params.npz` layout (keys, shapes, float32)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    W_enc = (rng.standard_normal((d_in, d_sae), dtype=np.float32) / np.sqrt(d_in)).astype(np.float32)
    np.savez(path, W_enc=W_enc, W_dec=np.ascontiguousarray(W_enc.T), b_enc=np.zeros(d_sae, np.float32),
             b_dec=np.zeros(d_in, np.float32), threshold=np.full(d_sae, 0.5, np.float32))  # fmt: skip
    return path


def tokenizer():
    """The embedded Gemma 3 270M tokenizer with Gemma's chat template (see the module docstring)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import GEMMA_CHAT_TEMPLATE
    from transformers import AutoTokenizer

    from unlearn.models import _embedded_folder

    tok = AutoTokenizer.from_pretrained(_embedded_folder("gemma-3-270m"))  # converted once, then cached
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    return tok


def rehearse(n_questions: int = 2, n_layers: int | None = None, n_features: int = 10) -> dict:
    """Build, load and run everything; returns the measurements (see the module docstring)."""
    import numpy as np
    import torch

    from unlearn.clamp.intervene import feature_edit
    from unlearn.eval.scoring import ALL_ORDERS, ModelLetterScorer, letter_prompts, letter_token_ids
    from unlearn.eval.suite import eval_config_from_preset, forwarded_sequences, prepare_eval
    from unlearn.hooks import forward_to
    from unlearn.models import LoadedModel
    from unlearn.sae.loaders import load_sae
    from unlearn.setup import resolve_setup

    out: dict = {"rss_start_gib": peak_rss_gib()}
    setup = resolve_setup("gemma-2-2b-it")
    t0 = time.perf_counter()
    model, d_sae = build_model(n_layers)
    out["build_s"] = time.perf_counter() - t0
    text = model.config
    n_params = sum(p.numel() for p in model.parameters())
    out |= {"layers": text.num_hidden_layers, "params": n_params, "rss_model_gib": peak_rss_gib()}
    tok = tokenizer()
    lm = LoadedModel(model, tok, setup)
    with tempfile.TemporaryDirectory(prefix="unlearn-fullsize-") as tmp:
        t0 = time.perf_counter()
        npz = write_gemma_scope_npz(Path(tmp) / "params.npz", text.hidden_size, d_sae)
        sae = load_sae(str(npz), device="cpu", dtype=torch.float32)
        out["sae_io_s"] = time.perf_counter() - t0
    hook = setup.hook_for().name  # the preset's blocks.3.hook_resid_post
    assert (sae.d_in, sae.d_sae) == (text.hidden_size, d_sae)
    cfg = eval_config_from_preset(setup.preset, forget=["offline:bio"], retain=["offline:retain"],
                                  known_only=True, limit=n_questions, batch_size=24)  # fmt: skip
    questions = []
    t0 = time.perf_counter()
    suite = prepare_eval(lm, cfg)  # known subsets: 24 orders per question, packed
    out["known_s"] = time.perf_counter() - t0
    for task in suite.tasks:
        questions += task.questions
        grouped = letter_prompts(task.questions, tok, chat_template=True, orders=ALL_ORDERS)
        assert max(max(p) for g in grouped for p in g) < text.vocab_size
    grouped = letter_prompts(questions, tok, chat_template=True, orders=ALL_ORDERS)
    rows = ModelLetterScorer(model, tok).rows(grouped)
    one = forwarded_sequences(model, tok, questions, cfg, chat_template=True)
    out |= {"questions": len(questions), "known_tokens": sum(len(r[0]) for r in rows),
            "unpacked_known_tokens": sum(len(p) for g in grouped for p in g),
            "eval_tokens": sum(len(s[0]) for s in one), "rss_known_gib": peak_rss_gib(),
            "mean_row": float(np.mean([len(r[0]) for r in rows]))}  # fmt: skip
    # the packed scorer against the whole model's last-position logits (soft-capped, all 256k rows)
    packed = ModelLetterScorer(model, tok).score_groups([grouped[0][:3]])
    with torch.no_grad():
        last_3V = torch.cat(
            [model(input_ids=torch.tensor([p])).logits[:, -1] for p in grouped[0][:3]]
        ).double()
    ids = letter_token_ids(tok)
    ref = torch.stack([torch.stack([last_3V[:, i] for i in g]).max(0).values for g in ids], 1)
    out["max_abs_vs_full_model"] = float((packed - ref).abs().max())
    t0 = time.perf_counter()
    base = suite.run(lm)
    out["base_s"] = time.perf_counter() - t0
    x = forward_to(model, [hook], input_ids=torch.tensor([grouped[0][0]]))[hook][0, 1:]  # BOS left out
    active = (sae.encode(x.float()) > 0).float().mean(0)
    features = torch.argsort(active, descending=True)[:n_features].tolist()
    t0 = time.perf_counter()
    with feature_edit(model, sae, features, "clamp", -20.0, hook_name=hook):
        point = suite.run(lm)
    out["point_s"] = time.perf_counter() - t0
    out |= {"rss_peak_gib": peak_rss_gib(), "base": base.block, "point": point.block,
            "frames": (base.questions, point.questions), "features_active": float(active[features].mean())}  # fmt: skip
    tokens = out["known_tokens"] + 2 * out["eval_tokens"]
    out["s_per_token"] = (out["known_s"] + out["base_s"] + out["point_s"]) / tokens
    return out


def flops_per_token(out: dict, config: dict) -> float:
    d, layers = config["hidden_size"], out["layers"]
    embed = config["vocab_size"] * d
    d_attn = config["num_attention_heads"] * config["head_dim"]
    return 2 * (out["params"] - embed) + 4 * layers * d_attn * out["mean_row"]


def main() -> None:
    import yaml

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=2, help="offline questions per side (bio, retain)")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the real 26 (quick runs)")
    parser.add_argument("--gpu-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--gpu-name", default="H100 SXM, bf16 dense")
    parser.add_argument("--utilisation", type=float, default=0.35, help="fraction of peak a forward reaches")
    args = parser.parse_args()
    out = rehearse(args.questions, args.layers)
    config = yaml.safe_load(CONFIG.read_text())
    n = out["questions"]
    print(f"random gemma-2-2b-it architecture, {out['layers']} layers, {out['params'] / 1e9:.2f}B parameters, fp32 "
          f"on CPU; random Gemma Scope params.npz {config['hidden_size']}x{config['sae_width']}; {n} questions")  # fmt: skip
    print(f"build {out['build_s']:.1f} s, SAE write+load {out['sae_io_s']:.1f} s")
    print(f"peak RSS: model built {out['rss_model_gib']:.2f} GiB, after known subsets {out['rss_known_gib']:.2f} "
          f"GiB, end {out['rss_peak_gib']:.2f} GiB")  # fmt: skip
    print(f"known subset (24 orders, packed): {out['known_tokens']} tokens (unpacked {out['unpacked_known_tokens']}, "
          f"{out['unpacked_known_tokens'] / out['known_tokens']:.2f}x), {out['known_s']:.1f} s")  # fmt: skip
    print(
        f"packed letter scores vs the whole model's logits (3 orders): max |Δ| {out['max_abs_vs_full_model']:.1e}"
    )
    print(f"baseline eval {out['eval_tokens']} tokens {out['base_s']:.1f} s; intervene point (clamp -20, 10 "
          f"features, active on {out['features_active']:.1%} of tokens) {out['point_s']:.1f} s")  # fmt: skip
    for name in ("base", "point"):
        print(f"  {name}: " + ", ".join(f"{t.task} acc_all {t.acc_all:.2f}" for t in out[name].scores))
    fpt = flops_per_token(out, config)
    cpu_rate = fpt / out["s_per_token"] / 1e9
    print(f"CPU: {out['s_per_token'] * 1e3:.0f} ms per forwarded token ({cpu_rate:.1f} GFLOP/s at "
          f"{fpt / 1e9:.2f} GFLOP per token)")  # fmt: skip
    per_q = (out["known_tokens"] + 2 * out["eval_tokens"]) / n
    total = (WMDP_BIO + MMLU_4) * per_q
    print(f"projection, full WMDP-bio ({WMDP_BIO}) + 4 MMLU subjects ({MMLU_4}): {per_q:.0f} tokens per question "
          f"-> {total / 1e6:.2f}M tokens x {fpt / 1e9:.2f} GFLOP = {total * fpt / 1e15:.1f} PFLOP; "
          f"on this CPU: {total * out['s_per_token'] / 3600:.1f} h")  # fmt: skip
    for gpu, tflops in ((args.gpu_name, args.gpu_tflops), ("RTX 3090 (SAEBench's), bf16 dense", 71.0)):
        gpu_s = total * fpt / (tflops * 1e12 * args.utilisation)
        print(f"  one {gpu} at {tflops:.0f} TFLOP/s x {args.utilisation:.0%} utilisation: {gpu_s:.0f} s "
              f"({gpu_s / 60:.1f} min)")  # fmt: skip


if __name__ == "__main__":
    main()
