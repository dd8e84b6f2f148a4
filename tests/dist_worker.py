"""What each rank computes in `test_distributed` (run by `accelerate launch`, also run in one process by
the test for the reference): scores, a hooked sweep point through the hook-layer cache, feature counters.

`python dist_worker.py OUT MODEL FORGET RETAIN SAE` writes `OUT/rank<r>.pt` (`compute`'s dict)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from unlearn import distributed
from unlearn.clamp.controls import EditStats
from unlearn.clamp.feature_stats import accumulate, summed_acts, token_chunks
from unlearn.clamp.intervene import feature_edit
from unlearn.eval.hook_cache import hook_layer_cache
from unlearn.eval.suite import EvalConfig, Reuse, load_tasks, prepare_eval, score_questions
from unlearn.models import load_model
from unlearn.sae.loaders import load_sae

HOOK = "blocks.1.hook_resid_post"
FEATURES = [0, 3, 5, 8, 13, 21]


def compute(model_dir: str, forget: str, retain: str, sae_dir: str) -> dict:
    lm = load_model(model_dir, device="cpu", dtype="float32")
    sae = load_sae(sae_dir, device="cpu", dtype=torch.float32)
    out: dict = {}
    letter = EvalConfig(forget=[forget], retain=[retain], protocol="letter", permutations=True, batch_size=5)
    cloze = EvalConfig(forget=[forget], retain=[retain], protocol="cloze", batch_size=3, known_only=True)
    for name, cfg in (("letter", letter), ("cloze", cloze)):
        questions = [q for t in load_tasks(cfg) for q in t.questions]
        calls: list[int] = []  # forwards this process ran: a rank runs its share of the batches
        counter = lm.model.get_decoder().register_forward_pre_hook(lambda *_, c=calls: c.append(1))
        with distributed.sharded():
            out[f"{name}_frame"] = score_questions(
                lm.model, lm.tokenizer, questions, cfg, chat_template=False
            )
        counter.remove()
        out[f"{name}_forwards"] = len(calls)
    # a sweep point: the known pass (sharded), then a clamp scored through Reuse on the cached prefix
    suite = prepare_eval(lm, cloze)
    base = suite.run(lm.model)
    out["known"] = [t.known.tolist() for t in suite.tasks]
    with torch.inference_mode(), hook_layer_cache(lm.model, HOOK) as cache:
        for rep in range(2):  # the second pass reads the cache
            stats = EditStats()

            def hook(on: bool, stats=stats):
                return feature_edit(lm.model, sae, FEATURES, "clamp", -8.0, hook_name=HOOK,
                                    stats=stats if on else EditStats())  # fmt: skip

            point = suite.run(lm.model, reuse=Reuse(base.questions, hook, HOOK))
            out[f"point_{rep}"], out[f"edit_{rep}"] = point.questions, stats.as_dict()
        out["cache_hits"] = cache.stats.hits
    texts = [q.question + " " + " ".join(q.choices) for t in load_tasks(cloze) for q in t.questions]
    chunks = list(token_chunks(texts, lm.tokenizer, max_length=12))
    kw = {"pad_id": lm.tokenizer.pad_token_id, "bos_id": lm.tokenizer.bos_token_id, "batch_tokens": 40}
    counters = accumulate(lm.model, sae, HOOK, chunks, **kw)
    out["n_tokens"], out["fire_count"], out["act_sum"] = (
        counters.n_tokens,
        counters.fire_count_F,
        counters.act_sum_F,
    )
    out["summed"] = summed_acts(lm.model, sae, HOOK, chunks, FEATURES, **kw)
    out["n_chunks"] = len(chunks)
    return out


if __name__ == "__main__":
    out_dir, *args = sys.argv[1:]
    result = compute(*args)
    result["rank"], result["world"] = distributed.rank(), distributed.world_size()
    torch.save(result, Path(out_dir) / f"rank{distributed.rank()}.pt")
