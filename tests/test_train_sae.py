"""`unlearn train-sae` (sae_training, activations, sae_quality): straight-through estimators, recovery of planted directions, the LM pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from unlearn.errors import UnlearnError
from unlearn.sae.activations import collect_activations, token_windows
from unlearn.sae.loaders import load_sae
from unlearn.sae.model import SAE
from unlearn.sae.quality import evaluate_sae
from unlearn.sae.train import TrainSAEConfig, run_train_sae
from unlearn.sae.training import JumpReLUFn, SAETrainConfig, StepFn, TrainableSAE, train_sae


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: one thread is far faster than several fighting over a loaded machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- straight-through estimators -----------------------------------------------------------------------


def test_ste_gradients_match_the_pseudo_derivative_formulas():
    """Autograd through JumpReLUFn/StepFn equals eqs. 11-12 of arXiv 2407.14435, recomputed in numpy."""
    rng = np.random.default_rng(0)
    pre_NF = rng.normal(size=(50, 6))
    theta_F = rng.uniform(0.1, 0.6, size=6)
    g_NF = rng.normal(size=(50, 6))
    eps = 0.4
    pre = torch.tensor(pre_NF, requires_grad=True)
    theta = torch.tensor(theta_F, requires_grad=True)

    out = JumpReLUFn.apply(pre, theta, eps)
    np.testing.assert_allclose(out.detach().numpy(), pre_NF * (pre_NF > theta_F))
    d_pre, d_theta = torch.autograd.grad((out * torch.tensor(g_NF)).sum(), (pre, theta))
    window = (np.abs((pre_NF - theta_F) / eps) < 0.5).astype(float)
    assert window.sum() > 20  # the kernel actually sees samples
    np.testing.assert_allclose(d_theta.numpy(), (-(theta_F / eps) * window * g_NF).sum(0), rtol=1e-12)
    np.testing.assert_allclose(d_pre.numpy(), (pre_NF > theta_F) * g_NF, rtol=1e-12)

    step = StepFn.apply(pre, theta, eps)
    np.testing.assert_array_equal(step.detach().numpy(), (pre_NF > theta_F).astype(float))
    d_pre, d_theta = torch.autograd.grad((step * torch.tensor(g_NF)).sum(), (pre, theta))
    np.testing.assert_allclose(d_theta.numpy(), (-(1 / eps) * window * g_NF).sum(0), rtol=1e-12)
    assert not d_pre.any()  # the L0 term sends nothing to the pre-activations


def test_ste_estimates_the_derivative_of_the_expected_loss():
    """The point of the estimator: averaged over samples z ~ N(0, 1) it is a kernel density estimate of
    d/dθ E[H(z − θ)] = −φ(θ) and d/dθ E[z·H(z − θ)] = −θ·φ(θ); compare with finite differences of
    those exact expectations (normal CDF / partial first moment)."""
    z = torch.randn(2_000_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theta = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    (g_step,) = torch.autograd.grad(StepFn.apply(z, theta, 0.05).mean(), theta)
    (g_jump,) = torch.autograd.grad(JumpReLUFn.apply(z, theta, 0.05).mean(), theta)

    def p_above(t):  # E[H(z − t)] = 1 − Φ(t)
        return 0.5 * math.erfc(t / math.sqrt(2))

    def moment_above(t):  # E[z·H(z − t)] = φ(t)
        return math.exp(-t * t / 2) / math.sqrt(2 * math.pi)

    h, t = 1e-4, 0.7
    fd_step = (p_above(t + h) - p_above(t - h)) / (2 * h)
    fd_jump = (moment_above(t + h) - moment_above(t - h)) / (2 * h)
    assert g_step.item() == pytest.approx(fd_step, rel=0.03)
    assert g_jump.item() == pytest.approx(fd_jump, rel=0.03)


@pytest.mark.parametrize("architecture", ["jumprelu", "topk"])
def test_differentiable_parts_match_finite_differences(architecture):
    """Away from the threshold (and from top-k ties) the loss is smooth in W_enc, b_enc, W_dec, b_dec:
    autograd must equal central finite differences (torch.autograd.gradcheck, float64)."""
    cfg = SAETrainConfig(architecture=architecture, width=12, k=4, threshold_init=0.05, seed=1)
    sae = TrainableSAE(5, cfg).double()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    x_ND = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    names = ["W_enc", "b_enc", "W_dec", "b_dec"]
    fixed = {n: p for n, p in sae.named_parameters() if n not in names}

    def loss(*params):
        state = dict(zip(names, params, strict=True)) | fixed
        x_hat, _, l0, _ = torch.func.functional_call(sae, state, (x_ND,))
        return (x_hat - x_ND).pow(2).sum(-1).mean() + 0.1 * l0.mean()

    params = tuple(getattr(sae, n).detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-6)


# --- training recovers planted sparse directions --------------------------------------------------------


def planted_data(n: int = 8192, d: int = 32, m: int = 16, p: float = 0.08, seed: int = 0):
    """Sparse non-negative combinations of m random unit directions, a constant offset and small noise."""
    gen = torch.Generator().manual_seed(seed)
    dirs_MD = torch.randn(m, d, generator=gen)
    dirs_MD /= dirs_MD.norm(dim=-1, keepdim=True)
    coef_NM = (torch.rand(n, m, generator=gen) < p) * (1 + 2 * torch.rand(n, m, generator=gen))
    x_ND = coef_NM @ dirs_MD + 0.01 * torch.randn(n, d, generator=gen) + 0.5
    return x_ND, dirs_MD


@pytest.mark.parametrize(("architecture", "extra"), [("jumprelu", {"l0_coeff": 1e-2}), ("topk", {"k": 4})])
def test_training_recovers_planted_directions(architecture, extra):
    x_ND, dirs_MD = planted_data()
    cfg = SAETrainConfig(
        architecture=architecture, width=64, lr=1e-2, batch_size=256, epochs=5, dead_tokens=5000, **extra
    )
    result = train_sae(x_ND, cfg, progress=False)
    sae = result.sae.to_sae(result.scale)
    W_dec_FD = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=-1, keepdim=True)
    best_cos_M = (dirs_MD @ W_dec_FD.T).max(dim=1).values
    assert best_cos_M.min() >= 0.9, best_cos_M
    # The folded SAE reads raw activations: it reconstructs the raw data, not the scaled copy.
    fve = 1 - (sae(x_ND) - x_ND).pow(2).sum() / (x_ND - x_ND.mean(0)).pow(2).sum()
    assert fve > 0.9
    l0 = (sae.encode(x_ND) > 0).sum(-1).float().mean()
    assert l0 < 6  # sparse: the planted mean is 16 · 0.08 ≈ 1.3 active directions


@pytest.mark.parametrize("architecture", ["jumprelu", "topk"])
def test_folded_sae_equals_the_training_sae_on_scaled_inputs(architecture):
    """Saved: raw inputs, unit-norm decoder rows, activations in residual units (s·||W_dec[i]||·f_i)."""
    cfg = SAETrainConfig(architecture=architecture, width=16, k=4, seed=4, threshold_init=0.05)
    sae = TrainableSAE(8, cfg, init_bias_DN=torch.full((8,), 0.3))
    x_ND = torch.randn(20, 8, generator=torch.Generator().manual_seed(5)) * 3.0
    scale = 2.5
    x_hat, f, _, _ = sae(x_ND / scale)
    folded = sae.to_sae(scale, dtype=torch.float64)
    n_F = scale * sae.W_dec.detach().double().norm(dim=-1)
    torch.testing.assert_close(folded.W_dec.norm(dim=-1), torch.ones(16, dtype=torch.float64))
    torch.testing.assert_close(folded.encode(x_ND.double()), f.double().detach() * n_F, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded(x_ND.double()), (x_hat * scale).double().detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "gated"}, "jumprelu or topk"),
        ({"architecture": "topk", "k": 0}, "--k"),
        ({"width": 0}, "--width"),
        ({"lr": -1.0}, "positive"),
        ({"target_l0": -3.0}, "--target-l0"),
    ],
)
def test_bad_training_config_is_a_user_error(change, message):
    with pytest.raises(UnlearnError, match=message):
        train_sae(torch.randn(64, 4), SAETrainConfig(**({"width": 8} | change)), progress=False)


# --- activations, evaluation and the run on a tiny model --------------------------------------------------

HOOK = "blocks.2.hook_resid_post"
WORDS = (
    "the cell nucleus holds DNA while mitochondria make ATP for the cell and enzymes fold proteins "
    "history geography computer science human aging photosynthesis virus genes"
).split()


def corpus(n_docs: int = 40, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(20, 120))) for _ in range(n_docs)]


def test_collected_activations_equal_hidden_states_without_bos_and_padding(tiny, tmp_path):
    lm = tiny("gemma3")
    texts = corpus(6)
    acts = collect_activations(
        lm.model, lm.tokenizer, HOOK, texts, n_tokens=10_000, max_length=32, batch_size=4, progress=False
    )
    expected = []
    for window in token_windows(lm.tokenizer, texts, 32):  # independent path: one window at a time
        with torch.no_grad():
            hidden = lm.model(torch.tensor([window]), output_hidden_states=True).hidden_states
        expected.append(hidden[3][0, 1:])  # hidden_states[i + 1] = output of layers[i]; drop BOS
    expected = torch.cat(expected)
    assert acts.dtype == torch.float16 and acts.shape == expected.shape
    torch.testing.assert_close(acts.float(), expected, rtol=2e-3, atol=2e-3)

    # A cached collection stopped early resumes where it stopped and gives the same rows.
    cache, key = tmp_path / "acts.f16", {"test": 1}
    part = collect_activations(
        lm.model,
        lm.tokenizer,
        HOOK,
        texts,
        n_tokens=50,
        max_length=32,
        batch_size=4,
        cache=cache,
        cache_key=key,
        progress=False,
    )
    assert len(part) == 50
    full = collect_activations(
        lm.model,
        lm.tokenizer,
        HOOK,
        texts,
        n_tokens=len(acts),
        max_length=32,
        batch_size=4,
        cache=cache,
        cache_key=key,
        progress=False,
    )
    torch.testing.assert_close(full.float(), acts.float())


def test_collected_activations_leave_out_sink_tokens_by_the_window_median(tiny):
    """With `sink_ratio`, a token whose residual norm is above ratio x its window's median (BOS left out of
    both) is not collected: checked window by window against numpy on the model's own hidden states. A
    ratio of 1.0 drops about half of each window, so the test sees both kinds of token."""
    lm = tiny("gemma3")
    texts = corpus(6)
    acts = collect_activations(lm.model, lm.tokenizer, HOOK, texts, n_tokens=10_000, max_length=32,
                               batch_size=4, sink_ratio=1.0, progress=False)  # fmt: skip
    expected = []
    for window in token_windows(lm.tokenizer, texts, 32):
        with torch.no_grad():
            x = lm.model(torch.tensor([window]), output_hidden_states=True).hidden_states[3][0, 1:]
        norm = np.linalg.norm(x.double().numpy(), axis=-1)
        expected.append(x[torch.from_numpy(norm <= 1.0 * np.median(norm))])
    expected = torch.cat(expected)
    n_all = sum(len(w) - 1 for w in token_windows(lm.tokenizer, texts, 32))
    assert 0.3 * n_all < len(expected) < 0.7 * n_all
    assert acts.shape == expected.shape
    torch.testing.assert_close(acts.float(), expected, rtol=2e-3, atol=2e-3)


def identity_sae(d: int) -> SAE:
    """relu(x) − relu(−x) = x: a 'standard' SAE that reconstructs exactly, with L0 = #non-zero coordinates."""
    sae = SAE(d, 2 * d, "standard")
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae


def test_evaluate_sae_splits_the_ce_forward_by_rows_under_a_logits_budget(tiny, monkeypatch):
    """With room for one row's logits only, the CE forwards go row by row, with the same metrics."""
    import unlearn.sae.quality as quality

    lm = tiny("gemma3")
    sae = SAE(64, 96, "jumprelu")
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(64, 96, generator=torch.Generator().manual_seed(0)) * 0.2)
        sae.threshold.fill_(0.3)
    args = dict(max_length=32, batch_size=4, ce_tokens=10_000, progress=False)
    whole = evaluate_sae(lm.model, lm.tokenizer, sae, HOOK, corpus(8, seed=1), **args)
    calls, ce = [], quality._ce_three_ways
    monkeypatch.setattr(quality, "LOGITS_BUDGET", 1)
    monkeypatch.setattr(quality, "_ce_three_ways", lambda *a: calls.append(len(a[3]["input_ids"])) or ce(*a))
    split = evaluate_sae(lm.model, lm.tokenizer, sae, HOOK, corpus(8, seed=1), **args)
    assert calls and set(calls) == {1}
    assert split["ce_tokens"] == whole["ce_tokens"] > 0
    for key in ("ce_clean", "ce_sae", "ce_zero", "variance_explained", "l0"):
        assert split[key] == pytest.approx(whole[key], rel=1e-5), key


def test_evaluate_sae_against_independent_computations(tiny):
    lm = tiny("gemma3")
    texts = corpus(8, seed=1)
    perfect = evaluate_sae(
        lm.model,
        lm.tokenizer,
        identity_sae(64),
        HOOK,
        texts,
        max_length=32,
        batch_size=4,
        ce_tokens=10_000,
        progress=False,
    )
    assert perfect["variance_explained"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["delta_ce"] == pytest.approx(0.0, abs=1e-5)
    assert perfect["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert perfect["l0"] == pytest.approx(64, abs=0.01)
    assert perfect["dead_frac"] == 0.0  # every coordinate takes both signs somewhere

    # Clean CE equals the model's own loss over the same predictions (BOS → token 1 excluded, as the
    # evaluation only counts predictions made from positions the splice touches).
    total, count = 0.0, 0
    for window in token_windows(lm.tokenizer, texts, 32):
        ids = torch.tensor([window])
        labels = ids.clone()
        labels[:, 1] = -100
        with torch.no_grad():
            loss = lm.model(ids, labels=labels).loss.item()
        total, count = total + loss * (len(window) - 2), count + len(window) - 2
    assert perfect["ce_tokens"] == count
    assert perfect["ce_clean"] == pytest.approx(total / count, rel=1e-5)

    # Variance explained of a random SAE against numpy float64 on the same activations.
    sae = SAE(64, 96, "jumprelu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(64, 96, generator=gen) * 0.2)
        sae.W_dec.copy_(torch.randn(96, 64, generator=gen) * 0.2)
        sae.threshold.fill_(0.3)
    got = evaluate_sae(
        lm.model, lm.tokenizer, sae, HOOK, texts, max_length=32, batch_size=4, ce_tokens=0, progress=False
    )
    x = (
        collect_activations(
            lm.model, lm.tokenizer, HOOK, texts, n_tokens=10**6, max_length=32, progress=False
        )
        .double()
        .numpy()
    )  # float16 copy: compare loosely
    W_enc, W_dec, thr = (t.detach().double().numpy() for t in (sae.W_enc, sae.W_dec, sae.threshold))
    pre = x @ W_enc
    f = np.where(pre > thr, pre, 0.0)
    fve = 1 - ((x - f @ W_dec) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert got["variance_explained"] == pytest.approx(fve, rel=1e-2)
    assert got["l0"] == pytest.approx((f > 0).sum(1).mean(), rel=1e-2)
    assert "ce_clean" not in got and got["tokens"] == len(x)


def test_run_train_sae_writes_a_loadable_sae_and_metrics(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    train_file, held_file = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    train_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(60, seed=2)))
    held_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(10, seed=3)))
    cfg = TrainSAEConfig(
        model=str(tiny_folder("gemma3")),
        hook=HOOK,
        sources=[str(train_file)],
        eval_sources=[str(held_file)],
        tokens=3000,
        max_length=32,
        ce_tokens=300,
        train=SAETrainConfig(width=128, batch_size=256, epochs=3, lr=5e-3),
        out=tmp_path / "shipped",
        dtype="float32",
        device="cpu",
    )
    run_dir = run_train_sae(cfg, progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("variance_explained", "l0", "dead_frac", "delta_ce", "ce_loss_recovered"):
        assert math.isfinite(metrics[key]), key
    assert metrics["variance_explained"] > 0.5  # random tiny models have easy activations
    sae = load_sae(tmp_path / "shipped")
    assert sae.dtype == torch.float16 and sae.hook_name == HOOK and sae.architecture == "jumprelu"
    assert (tmp_path / "shipped" / "training.json").exists() and (run_dir / "losses.csv").exists()


def test_run_train_sae_user_errors(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    folder = str(tiny_folder("gemma3"))
    with pytest.raises(UnlearnError, match="--hook"):
        run_train_sae(TrainSAEConfig(model=folder, device="cpu"), progress=False)
    with pytest.raises(UnlearnError, match="--source"):
        run_train_sae(TrainSAEConfig(model=folder, hook=HOOK, sources=[]), progress=False)
    with pytest.raises(UnlearnError, match="--tokens"):
        run_train_sae(TrainSAEConfig(model=folder, hook=HOOK, tokens=10), progress=False)
    with pytest.raises(UnlearnError, match="--sink-ratio must be > 1"):
        run_train_sae(TrainSAEConfig(model=folder, hook=HOOK, sink_ratio=0.5), progress=False)


def test_train_sae_command_runs_through_typer(tiny_folder, tmp_path, monkeypatch):
    """The typer signature maps onto the config: a tiny topk run from the command line."""
    import typer
    from typer.testing import CliRunner

    from unlearn.sae.train import train_sae_command

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path / "results"))
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(30, seed=4)))
    app = typer.Typer()
    app.command()(train_sae_command)
    args = ["--model", str(tiny_folder("gemma3")), "--hook", HOOK, "--architecture", "topk", "--k", "8",
            "--width", "64", "--tokens", "1000", "--batch-size", "250", "--epochs", "1", "--max-length", "32",
            "--source", str(data), "--eval-source", str(data), "--ce-tokens", "100", "--save-dtype", "float32",
            "--device", "cpu", "--run-id", "cli"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    sae = load_sae(tmp_path / "results" / "train-sae" / "cli" / "sae")
    assert sae.architecture == "topk" and sae.k == 8 and sae.d_sae == 64 and sae.dtype == torch.float32
    assert "variance explained" in result.output
