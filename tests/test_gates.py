"""Gated clamping: `dsg` is the paper's ρ (an independent float64 re-implementation at batch size 1) and is
unchanged by padding; window/CUSUM never drop when evidence-free tokens are added (seeded property loops,
checked against brute-force loops); a gate below threshold is bit-identical; hooks never leak;
calibration hits the requested FPR; cached generation decides on the whole history."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unlearn.clamp.gates import (
    FiringLog,
    Gate,
    _edited,
    calibrate_threshold,
    cusum_stat,
    dsg_stat,
    firing_rate,
    gate_scores,
    gated,
    window_stat,
)
from unlearn.errors import UnlearnError
from unlearn.sae.model import SAE

HOOK = "blocks.1.hook_resid_post"
FEATURES = (3, 9, 17, 21, 30)
TEXTS = [
    "The heart pumps blood through the body.",
    "Mitochondria make ATP for the cell and the nucleus holds DNA.",
    "History geography",
]


def _inputs(lm, texts=TEXTS):
    return lm.tokenizer(list(texts), return_tensors="pt", padding=True)


def _resid(lm, inputs):
    """blocks.1.hook_resid_post from the model's own hidden_states output (not our hook machinery)."""
    with torch.no_grad():
        return lm.model(**inputs, output_hidden_states=True).hidden_states[2]


def firing_sae(lm, seed: int = 0, frac: float = 0.15) -> SAE:
    """A float64 standard SAE at HOOK whose features fire on about `frac` of the tiny model's tokens."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(64, 40, "standard", hook_name=HOOK, dtype=torch.float64)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(64, 40, generator=g, dtype=torch.float64))
        sae.W_dec.copy_(torch.randn(40, 64, generator=g, dtype=torch.float64) * 0.3)
        sae.b_dec.zero_()
        x = _resid(lm, _inputs(lm)).double().reshape(-1, 64)
        sae.b_enc.copy_(-torch.quantile(x @ sae.W_enc, 1 - frac, dim=0))
    return sae.requires_grad_(False)


def paper_rho(lm, sae: SAE, ids_1T: torch.Tensor, features) -> float:
    """Their ρ at batch size 1 (DynamicSAEGuardrails utils/intervention.py): dense encode, BOS position
    zeroed, active = any chosen feature > 0, ρ = active tokens / sequence length."""
    x_TD = _resid(lm, {"input_ids": ids_1T})[0].double()
    f_TF = torch.relu(x_TD @ sae.W_enc + sae.b_enc)
    f_TF[0] = 0.0
    active_T = (f_TF[:, list(features)] > 0).any(-1)
    return active_T.sum().item() / ids_1T.shape[1]


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_dsg_is_the_papers_rho_and_padding_free(tiny, family):
    lm = tiny(family)
    sae = firing_sae(lm)
    gate = Gate("dsg", threshold=2.0, features=FEATURES)  # ρ ≤ 1: never fires, activations untouched
    singles = [lm.tokenizer(t, return_tensors="pt")["input_ids"] for t in TEXTS]
    want = [paper_rho(lm, sae, ids, FEATURES) for ids in singles]
    assert len(set(want)) > 1 and 0 < min(want) and max(want) < 1, "the test needs varied, partial activity"
    for ids, w in zip(singles, want, strict=True):
        rec: list = []
        with torch.no_grad(), gated(lm.model, sae, gate, record=rec):
            lm.model(input_ids=ids)
        assert rec == [[pytest.approx(w, abs=1e-12)]]
    rec = []
    inputs = _inputs(lm)
    assert (inputs["attention_mask"] == 0).any(), "the batch must be padded"
    with torch.no_grad(), gated(lm.model, sae, gate, record=rec):
        lm.model(**inputs)
    np.testing.assert_allclose(rec[0], want, rtol=0, atol=1e-12)
    for bs in (1, 3):
        np.testing.assert_allclose(gate_scores(lm, sae, gate, TEXTS, batch_size=bs), want, rtol=0, atol=1e-12)


def test_gate_scores_apply_the_gates_weights(tiny):
    """`gate_scores` (the dilution check's cheap path) weighs evidence as the gate itself does: equal to a
    dense float64 reference and to the statistics the installed gate records, and not to unweighted sums."""
    lm = tiny("gemma3")
    sae = firing_sae(lm)
    weights = (0.5, 2.0, 1.0, 4.0, 0.25)
    gate = Gate("window", threshold=1e9, features=FEATURES, window=3, evidence="sum", weights=weights)
    want = []
    for text in TEXTS:
        ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
        f_TK = torch.relu(_resid(lm, {"input_ids": ids})[0].double() @ sae.W_enc + sae.b_enc)[
            :, list(FEATURES)
        ]
        e_T = (f_TK * torch.tensor(weights, dtype=torch.float64)).sum(-1)
        e_T[0] = 0.0  # BOS
        padded = np.concatenate([np.zeros(2), e_T.numpy(), np.zeros(2)])
        want.append(max(padded[s : s + 3].sum() / 3 for s in range(len(padded) - 2)))
    np.testing.assert_allclose(gate_scores(lm, sae, gate, TEXTS, batch_size=2), want, rtol=1e-12)
    rec = FiringLog()
    with torch.no_grad(), gated(lm.model, sae, gate, record=rec):
        lm.model(**_inputs(lm))
    np.testing.assert_allclose(rec.all_stats(), want, rtol=1e-5)  # a padded float32 batch
    unweighted = gate_scores(lm, sae, gate.replace(weights=None), TEXTS)
    assert not np.allclose(unweighted, want)


def test_paper_rho_is_diluted_by_padding_ours_is_not(tiny):
    """The reason for counting real tokens: their ρ over the padded length drops for the short rows."""
    lm = tiny("gemma3")
    sae = firing_sae(lm)
    inputs = _inputs(lm)
    padded = [paper_rho(lm, sae, inputs["input_ids"][b : b + 1], FEATURES) for b in range(len(TEXTS))]
    ours = gate_scores(lm, sae, Gate("dsg", features=FEATURES), TEXTS)
    short = inputs["attention_mask"].sum(1) < inputs["attention_mask"].shape[1]
    assert all(p != pytest.approx(o) for p, o, s in zip(padded, ours, short, strict=True) if s)


@pytest.mark.parametrize("kind", ["dsg", "window", "cusum"])
def test_gate_below_threshold_is_bit_identical(tiny, kind):
    lm = tiny("gemma3")
    sae = firing_sae(lm).float()
    inputs = _inputs(lm)
    gate = Gate(kind, features=FEATURES, value=-50.0, window=4, drift=0.1)
    stats = gate_scores(lm, sae, gate, TEXTS)
    with torch.no_grad():
        plain = lm.model(**inputs).logits
        with gated(lm.model, sae, gate.replace(threshold=float(stats.max()))):
            silent = lm.model(**inputs).logits
        # threshold between the rows: the rows above it change, the others stay bit-identical
        tau = float(np.sort(stats)[0])
        assert (stats > tau).any() and (stats <= tau).any()
        with gated(lm.model, sae, gate.replace(threshold=tau)):
            mixed = lm.model(**inputs).logits
    assert torch.equal(plain, silent)
    for b in range(len(TEXTS)):
        same = torch.equal(mixed[b], plain[b])
        assert same == (stats[b] <= tau), (b, stats[b], tau)


@pytest.mark.parametrize("scope", ["token", "feature"])
def test_edit_equals_dense_form(tiny, scope):
    """The edit at firing rows = decode(f') + (x − decode(f)) with the full feature vector, f' setting (all
    or only the active) chosen features to the value on active non-BOS tokens (their rule for `token`)."""
    lm = tiny("gemma3")
    sae = firing_sae(lm)
    x = _resid(lm, _inputs(lm)).double()
    idx = torch.tensor(FEATURES)
    f = sae.encode(x)
    active = (f[..., idx] > 0).any(-1)
    active[:, 0] = False
    f_new = f.clone()
    for b, t in active.nonzero().tolist():
        for k in FEATURES:
            if scope == "token" or f[b, t, k] > 0:
                f_new[b, t, k] = -7.0
    want = sae.decode(f_new) + (x - sae.decode(f))
    gate = Gate("dsg", features=FEATURES, value=-7.0, scope=scope)
    got = _edited(sae, gate, x, sae.encode_subset(x, idx), active, idx)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)


def _brute_window(e, w):
    """Max over every placement of a w-token window (may overhang either end, which reads zeros)."""
    best = 0.0
    for start in range(-w + 1, len(e)):
        best = max(best, sum(e[t] for t in range(start, start + w) if 0 <= t < len(e)) / w)
    return best


def _brute_cusum(e, k):
    s, best = 0.0, 0.0
    for v in e:
        s = max(0.0, s + v - k)
        best = max(best, s)
    return best


def test_statistics_match_brute_force_and_never_drop_when_padded_with_no_evidence():
    rng = np.random.default_rng(0)
    dsg_dropped = 0
    for trial in range(400):
        n = int(rng.integers(1, 40))
        e = rng.random(n) * (rng.random(n) < 0.4) if trial % 2 else (rng.random(n) < 0.3).astype(float)
        w, k = int(rng.integers(1, 12)), float(rng.uniform(0.05, 0.9))
        assert window_stat(e, w) == pytest.approx(_brute_window(list(e), w), abs=1e-12)
        assert cusum_stat(e, k) == pytest.approx(_brute_cusum(list(e), k), abs=1e-12)
        before, after = np.zeros(int(rng.integers(0, 60))), np.zeros(int(rng.integers(0, 60)))
        longer = np.concatenate([before, e, after])
        assert window_stat(longer, w) >= window_stat(e, w) - 1e-12
        assert cusum_stat(longer, k) >= cusum_stat(e, k) - 1e-12
        dsg_dropped += dsg_stat(longer) < dsg_stat(e) - 1e-12
    assert dsg_dropped > 100, "the mean (dsg) does drop: the property is not vacuous"


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_removed_also_on_error(tiny):
    lm = tiny("gemma3")
    sae = firing_sae(lm)
    before = _hook_count(lm.model)
    with gated(lm.model, sae, Gate("cusum", features=FEATURES)):
        assert _hook_count(lm.model) == before + 2
    assert _hook_count(lm.model) == before
    with pytest.raises(RuntimeError), gated(lm.model, sae, Gate("window", features=FEATURES)):
        raise RuntimeError("boom")
    assert _hook_count(lm.model) == before
    with pytest.raises(UnlearnError, match="0..39"), gated(lm.model, sae, Gate("dsg", features=(40,))):
        pass
    assert _hook_count(lm.model) == before


def test_calibration_hits_the_requested_fpr():
    rng = np.random.default_rng(1)
    for n in (20, 101, 1000):
        scores = rng.normal(size=n)
        for fpr in (0.0, 0.01, 0.05, 0.2):
            tau = calibrate_threshold(scores, fpr)
            rate = firing_rate(scores, tau)
            assert rate <= fpr + 1e-12 and rate > fpr - 1 / n
    # ties: the best achievable rate ≤ fpr over every candidate threshold, found by brute force
    for _ in range(50):
        scores = rng.integers(0, 6, size=int(rng.integers(5, 60))) / 10
        fpr = float(rng.uniform(0, 0.6))
        best = max(r for r in (firing_rate(scores, t) for t in np.unique(scores)) if r <= fpr + 1e-12)
        assert firing_rate(scores, calibrate_threshold(scores, fpr)) == best
    with pytest.raises(UnlearnError):
        calibrate_threshold([], 0.05)


def test_gate_json_round_trip_and_errors():
    gate = Gate("window", 0.25, features=[4, 2], window=8, target_fpr=0.05, measured_fpr={"test": 0.04})
    assert Gate.from_json(gate.to_json()) == gate
    assert gate.to_json()["features"] == [4, 2]
    with pytest.raises(UnlearnError, match="dsg"):
        Gate("mean")
    with pytest.raises(UnlearnError):
        Gate("dsg", threshold=math.inf)


def test_cached_generation_decides_on_the_whole_history(tiny):
    """Under generate's KV cache each forward sees one new token; the statistic must still be that of
    the whole sequence so far (checked against one uncached forward), and restart with the next prompt."""
    lm = tiny("gemma3")
    sae = firing_sae(lm)
    for kind in ("dsg", "window", "cusum"):
        gate = Gate(kind, threshold=1e9, features=FEATURES, window=4, drift=0.1)
        rec: list = []
        prompt = lm.tokenizer(TEXTS[1], return_tensors="pt")
        with torch.no_grad(), gated(lm.model, sae, gate, record=rec):
            out = lm.model.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=True)
            first_of_second = len(rec)
            lm.model.generate(**prompt, max_new_tokens=2, do_sample=False, use_cache=True)
        assert first_of_second >= 6 and len(rec) > first_of_second
        with torch.no_grad():  # every token generate forwarded (the last one never is)
            x = _resid(lm, {"input_ids": out[:, :-1]})[0].double()
        f = sae.encode(x)[:, list(FEATURES)]
        e = (f > 0).any(-1).double().numpy()
        e[0] = 0.0
        want = {"dsg": dsg_stat(e), "window": window_stat(e, 4), "cusum": cusum_stat(e, 0.1)}[kind]
        assert rec[first_of_second - 1][0] == pytest.approx(want, abs=1e-9), kind
        assert rec[first_of_second] == pytest.approx(rec[0], abs=1e-12), "a new prompt restarts the history"


def test_packed_cloze_scoring_sees_the_same_statistics_at_any_batch_size(tiny):
    """The cloze scorer's packed rows carry a 4D mask; real tokens must still be found exactly, so the
    per-sequence statistics and the gated scores do not depend on how questions are batched."""
    from conftest import Q

    from unlearn.eval.scoring import score_cloze

    lm = tiny("gemma3")
    sae = firing_sae(lm).float()
    qs = [Q("Which organ pumps blood?", ["heart", "liver", "the kidney", "lung"], 0),
          Q("What do mitochondria make for the cell?", ["ATP", "DNA", "genes", "virus"], 0),
          Q("Where is DNA?", ["nucleus", "heart", "liver", "lung"], 0)]  # fmt: skip
    gate = Gate("cusum", features=FEATURES, drift=0.3, value=-30.0)
    probe: list = []
    with torch.no_grad(), gated(lm.model, sae, gate.replace(threshold=1e9), record=probe):
        score_cloze(qs, lm.model, lm.tokenizer, batch_size=1)
    singles = sorted(s for rec in probe for s in rec)
    tau = singles[0]  # the lowest-scoring sequence stays unedited, the others fire
    assert tau < singles[-1], singles
    out = {}
    for bs in (1, 3):
        rec: list = []
        with torch.no_grad(), gated(lm.model, sae, gate.replace(threshold=tau), record=rec):
            out[bs] = score_cloze(qs, lm.model, lm.tokenizer, batch_size=bs)["ll"]
        assert sorted(s for r in rec for s in r) == pytest.approx(singles, abs=1e-9)
    with torch.no_grad():
        plain = score_cloze(qs, lm.model, lm.tokenizer, batch_size=3)["ll"]
    np.testing.assert_allclose(out[1], out[3], rtol=1e-4, atol=1e-4)
    changed = ~np.isclose(out[3], plain, rtol=0, atol=1e-6).all(1)
    assert changed.any() and not changed.all(), "the gate must fire on some questions only"


def test_weighted_sum_evidence_is_the_dense_weighted_sum(tiny):
    """`sum` evidence with weights = Σ_k w_k · relu-encoded f_k on counted tokens (BOS 0), float64."""
    from unlearn.clamp.gates import token_evidence

    lm = tiny("gemma3")
    sae = firing_sae(lm)
    x = _resid(lm, _inputs(lm)).double()
    weights = (0.5, 2.0, 1.0, 3.0, 0.25)
    gate = Gate("window", features=FEATURES, evidence="sum", weights=weights)
    counted = torch.ones(x.shape[:2], dtype=torch.bool)
    counted[:, 0] = False
    got = token_evidence(gate, sae.encode_subset(x, torch.tensor(FEATURES)), counted)
    f = sae.encode(x)[..., list(FEATURES)]
    want = sum(w * f[..., k] for k, w in enumerate(weights)) * counted
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    count = token_evidence(
        gate.replace(evidence="count"), sae.encode_subset(x, torch.tensor(FEATURES)), counted
    )
    torch.testing.assert_close(count, (f > 0).sum(-1).double() * counted)
    with pytest.raises(UnlearnError, match="one per feature"):
        Gate("window", features=FEATURES, evidence="sum", weights=(1.0,))


def test_dry_run_records_what_the_live_gate_sees_and_edits_nothing(tiny):
    from unlearn.clamp.gates import FiringLog

    lm = tiny("gemma3")
    sae = firing_sae(lm).float()
    inputs = _inputs(lm)
    gate = Gate("window", threshold=0.0, features=FEATURES, value=-50.0, window=4)
    dry, live = FiringLog(), FiringLog()
    with torch.no_grad():
        plain = lm.model(**inputs).logits
        with gated(lm.model, sae, gate, record=dry, dry_run=True):
            dry.start("retain")
            dried = lm.model(**inputs).logits
        with gated(lm.model, sae, gate, record=live):
            live.start("retain")
            fired = lm.model(**inputs).logits
    assert torch.equal(dried, plain) and not torch.equal(fired, plain)
    assert dry.stats == live.stats and set(dry.stats) == {"retain"}
    stats = np.array(dry.stats["retain"])
    assert dry.rates(0.0, "_test") == {"retain_test": float((stats > 0).mean())}


def test_calibration_on_forwarded_cloze_sequences_meets_the_target_on_them(tiny):
    """τ is set from the packed sequences the cloze scorer really forwards: with continuous (weighted
    sum) evidence the firing rate on those same sequences is exactly ⌊fpr·n⌋ / n."""
    from types import SimpleNamespace

    from conftest import Q

    from unlearn.clamp.gate_points import forwarded_stats
    from unlearn.clamp.gates import calibrated
    from unlearn.eval.suite import EvalConfig

    lm = tiny("gemma3")
    sae = firing_sae(lm, frac=0.4).float()
    words = ["heart", "blood", "cell", "DNA", "liver", "lung", "bone", "nerve", "skin", "eye"]
    qs = [Q(f"{words[i]} {words[(3 * i) % 10]}?", ["a", "b", "c", "d"], 0) for i in range(10)]
    suite = SimpleNamespace(cfg=EvalConfig(protocol="cloze", mutual_info=False), chat_template=False)
    gate = Gate("window", features=FEATURES, evidence="sum", weights=(1.0,) * 5, window=4, value=-30.0)
    stats = forwarded_stats(lm, sae, gate, suite, qs, hook_name=HOOK)
    assert len(stats) == len(qs)  # one packed row per question
    desc = sorted(stats, reverse=True)
    for fpr in (0.0, 0.1, 0.3):
        k = math.floor(fpr * len(qs) + 1e-9)
        rate = firing_rate(stats, calibrated(gate, stats, fpr).threshold)
        assert rate <= k / len(qs) and (rate == k / len(qs) or desc[k - 1] == desc[k]), (fpr, desc)


@pytest.mark.parametrize("protocol,mutual_info", [("cloze", True), ("cloze", False), ("letter", False)])
def test_forwarded_stats_equal_what_the_real_scorer_forwards(tiny, protocol, mutual_info):
    """The calibration's fast path (sequences rebuilt, forwards stopped at the hook) sees exactly the
    statistics the gate records while the real scorer runs."""
    from types import SimpleNamespace

    from conftest import Q

    from unlearn.clamp.gate_points import forwarded_stats
    from unlearn.clamp.gates import FiringLog
    from unlearn.eval.suite import EvalConfig, score_questions

    lm = tiny("gemma3")
    sae = firing_sae(lm, frac=0.3).float()
    qs = [Q("Which organ pumps blood?", ["heart", "liver", "the kidney", "lung"], 0),
          Q("What do mitochondria make for the cell and the body?", ["ATP", "DNA", "genes", "virus"], 1),
          Q("Where is DNA?", ["nucleus", "heart", "liver", "lung"], 2)]  # fmt: skip
    cfg = EvalConfig(protocol=protocol, mutual_info=mutual_info, batch_size=2)
    gate = Gate("window", features=FEATURES, evidence="sum", window=4, value=-30.0)
    fast = forwarded_stats(lm, sae, gate, SimpleNamespace(cfg=cfg, chat_template=False), qs, hook_name=HOOK)
    real = FiringLog()
    with torch.no_grad(), gated(lm.model, sae, gate, record=real, dry_run=True):
        score_questions(lm.model, lm.tokenizer, qs, cfg, chat_template=False)
    # float32 rows batched with different neighbours (so different padding): equal to rounding
    assert sorted(fast) == pytest.approx(sorted(real.all_stats()), rel=1e-6, abs=1e-9)
    assert len(fast) == len(qs) * (2 if mutual_info else 1)  # one packed row per question (and prior)


def _brute_cover(e, w, tau):
    """Token i is covered iff some w-token placement holding it (overhangs read zeros) has Σe / w > τ."""
    n = len(e)
    sums = {s: sum(e[t] for t in range(s, s + w) if 0 <= t < n) / w for s in range(-w + 1, n)}
    return np.array([any(sums[s] > tau for s in range(i - w + 1, i + 1)) for i in range(n)], dtype=bool)


def test_window_cover_matches_brute_force_and_ignores_evidence_free_text_around():
    from unlearn.clamp.gates import window_cover

    rng = np.random.default_rng(1)
    partial = 0
    for _ in range(300):
        n, w = int(rng.integers(1, 40)), int(rng.integers(1, 10))
        e = rng.random(n) * (rng.random(n) < 0.35)
        tau = float(rng.uniform(0, 0.4))
        cover = window_cover(e, w, tau)
        np.testing.assert_array_equal(cover, _brute_cover(list(e), w, tau))
        assert cover.any() == (window_stat(e, w) > tau)  # covers something iff the gate fires
        before, after = np.zeros(int(rng.integers(0, 50))), np.zeros(int(rng.integers(0, 50)))
        longer = window_cover(np.concatenate([before, e, after]), w, tau)
        np.testing.assert_array_equal(longer[len(before) : len(before) + n], cover)
        partial += bool(cover.any() and not cover[e > 0].all())
    assert partial > 20, "some firing sequences must leave active tokens outside every passing window"


def test_window_span_edits_exactly_the_covered_active_tokens(tiny):
    """span='windows' = the dense edit on active, counted tokens inside a passing window (a reference built
    from `sequence_evidence` and the brute-force cover); span='sequence' edits more of the same rows."""
    from unlearn import hooks
    from unlearn.clamp.gates import sequence_evidence

    lm = tiny("gemma3")
    sae = firing_sae(lm, frac=0.1).float()
    texts = [" ".join(TEXTS * 3), TEXTS[1]]
    inputs = _inputs(lm, texts)
    e_rows = sequence_evidence(lm, sae, Gate("window", features=FEATURES, evidence="sum"), texts)
    w = 3
    tau = float(np.quantile(np.concatenate([np.convolve(e, np.ones(w)) / w for e in e_rows]), 0.9))
    gate = Gate("window", threshold=tau, features=FEATURES, value=-40.0, window=w, evidence="sum")
    idx = torch.tensor(FEATURES)
    T = inputs["input_ids"].shape[1]
    cover = torch.zeros(len(texts), T, dtype=torch.bool)
    for b, e in enumerate(e_rows):
        cover[b, : len(e)] = torch.from_numpy(_brute_cover(list(e), w, tau))
    assert 0 < int(cover.sum()) < sum(int((e > 0).sum()) for e in e_rows)
    real = inputs["attention_mask"].bool()
    counted = real & (inputs["input_ids"] != lm.tokenizer.bos_token_id)

    def reference(x):
        f = sae.encode_subset(x, idx)
        mask = cover & counted & (f > 0).any(-1)
        return _edited(sae, gate, x, f, mask, idx).to(x.dtype)

    with torch.no_grad():
        with hooks.edit(lm.model, HOOK, reference):
            want = lm.model(**inputs).logits
        with gated(lm.model, sae, gate.replace(span="windows")):
            got = lm.model(**inputs).logits
        with gated(lm.model, sae, gate):
            whole = lm.model(**inputs).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - whole).abs().max() > 1e-3, "the sequence span must edit more on these rows"
    with pytest.raises(UnlearnError, match="needs the window gate"):
        Gate("dsg", features=FEATURES, span="windows")


def test_sink_tokens_match_a_numpy_reference():
    from unlearn.clamp.gates import sink_tokens

    rng = np.random.default_rng(0)
    norm = rng.uniform(1, 2, (4, 9))
    norm[0, 3], norm[1, 5], norm[2, 1] = 50.0, 7.9, 8.1  # row 1: 7.9 < 4 x median (~2 x 1.5); row 2 above
    counted = np.ones((4, 9), dtype=bool)
    counted[:, 0] = False
    counted[3] = False  # nothing counted: nothing is a sink
    counted[2, 1] = True
    want = np.zeros_like(counted)
    for b in range(4):
        if counted[b].any():
            med = np.median(norm[b][counted[b]])
            want[b] = counted[b] & (norm[b] > 4.0 * med)
    got = sink_tokens(torch.from_numpy(norm), torch.from_numpy(counted), 4.0).numpy()
    np.testing.assert_array_equal(got, want)
    assert got[0, 3] and got.sum() == int(want.sum()) >= 1
    assert not sink_tokens(torch.from_numpy(norm), torch.from_numpy(counted), None).any()


def test_a_massive_activation_token_gives_no_evidence_and_is_never_edited(tiny):
    """A token whose residual is blown up 100x (a planted attention sink) is left bit-identical by a gate
    that fires everywhere, and its evidence is 0: the statistic equals the one without that token."""
    from unlearn.hooks import decoder_layers

    lm = tiny("gemma3")
    sae = firing_sae(lm, frac=0.5).float()
    ids = lm.tokenizer(TEXTS[1], return_tensors="pt")["input_ids"]
    sink = 4
    layer = decoder_layers(lm.model)[1]

    def plant(_mod, _args, out):
        out = out.clone()
        out[:, sink] *= 100.0
        return out

    seen = {}

    def grab(_mod, _args, out):
        seen["x"] = out

    handle = layer.register_forward_hook(plant)
    try:
        gate = Gate("dsg", threshold=-1.0, features=FEATURES, value=-40.0, scope="feature")
        with torch.no_grad():
            g = layer.register_forward_hook(grab)
            lm.model(input_ids=ids)
            g.remove()
            plain = seen["x"][0]
            rec = FiringLog()
            with gated(lm.model, sae, gate, record=rec):
                g = layer.register_forward_hook(grab)  # after the gate's hook: sees its output
                lm.model(input_ids=ids)
                g.remove()
        edited = seen["x"][0]
        assert torch.equal(edited[sink], plain[sink]) and torch.equal(edited[0], plain[0])  # sink and BOS
        assert not torch.equal(edited, plain)
        f = torch.relu(plain.double() @ sae.W_enc.double() + sae.b_enc.double())[:, list(FEATURES)]
        active = (f > 0).any(-1)
        assert active[sink], "the planted sink must have active features for the test to mean anything"
        active[0] = active[sink] = False
        assert rec.all_stats() == [pytest.approx(active.sum().item() / ids.shape[1], abs=1e-12)]
        rec = FiringLog()
        with torch.no_grad(), gated(lm.model, sae, gate.replace(sink_ratio=None), record=rec):
            lm.model(input_ids=ids)
        assert rec.all_stats()[0] > active.sum().item() / ids.shape[1]  # counted when sinks are not skipped
    finally:
        handle.remove()


def test_feature_edit_with_sink_ratio_leaves_a_massive_token_alone(tiny):
    """The static clamp (`feature_edit`) skips massive-activation tokens only when asked (`sink_ratio`):
    the paper's rule (SAEBench) protects BOS alone."""
    from unlearn.clamp.intervene import feature_edit
    from unlearn.hooks import decoder_layers

    lm = tiny("gemma3")
    sae = firing_sae(lm, frac=0.5).float()
    ids = lm.tokenizer(TEXTS[1], return_tensors="pt")["input_ids"]
    layer, sink, seen = decoder_layers(lm.model)[1], 4, {}

    def plant(_mod, _args, out):
        out = out.clone()
        out[:, sink] *= 100.0
        return out

    def run(ratio):
        with feature_edit(lm.model, sae, FEATURES, "clamp", -40.0, sink_ratio=ratio):
            g = layer.register_forward_hook(lambda _m, _a, out: seen.__setitem__("x", out[0]))
            lm.model(input_ids=ids)
            g.remove()
        return seen["x"]

    handle = layer.register_forward_hook(plant)
    try:
        with torch.no_grad():
            g = layer.register_forward_hook(lambda _m, _a, out: seen.__setitem__("x", out[0]))
            lm.model(input_ids=ids)
            g.remove()
            plain = seen["x"]
            skipping, paper = run(4.0), run(None)
        assert torch.equal(skipping[sink], plain[sink]) and not torch.equal(paper[sink], plain[sink])
        others = [t for t in range(1, ids.shape[1]) if t != sink]
        assert torch.equal(skipping[others], paper[others])  # elsewhere the same edit
    finally:
        handle.remove()
