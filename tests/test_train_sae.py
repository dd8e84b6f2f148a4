"""`unlearn.train_sae`: straight-through estimators, recovery of planted directions, the LM pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unlearn.errors import UnlearnError
from unlearn.train_sae import JumpReLUFn, SAETrainConfig, StepFn, TrainableSAE, train_sae

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


@pytest.fixture
def one_thread():
    """Tiny matmuls run faster on one thread than fighting over a loaded machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def planted_data(n: int = 8192, d: int = 32, m: int = 16, p: float = 0.08, seed: int = 0):
    """Sparse non-negative combinations of m random unit directions, a constant offset and small noise."""
    gen = torch.Generator().manual_seed(seed)
    dirs_MD = torch.randn(m, d, generator=gen)
    dirs_MD /= dirs_MD.norm(dim=-1, keepdim=True)
    coef_NM = (torch.rand(n, m, generator=gen) < p) * (1 + 2 * torch.rand(n, m, generator=gen))
    x_ND = coef_NM @ dirs_MD + 0.01 * torch.randn(n, d, generator=gen) + 0.5
    return x_ND, dirs_MD


@pytest.mark.parametrize(("architecture", "extra"), [("jumprelu", {"l0_coeff": 1e-2}), ("topk", {"k": 4})])
def test_training_recovers_planted_directions(architecture, extra, one_thread):
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


def test_folded_sae_equals_the_training_sae_on_scaled_inputs():
    cfg = SAETrainConfig(architecture="jumprelu", width=16, seed=4, threshold_init=0.05)
    sae = TrainableSAE(8, cfg, init_bias_DN=torch.full((8,), 0.3))
    x_ND = torch.randn(20, 8, generator=torch.Generator().manual_seed(5)) * 3.0
    scale = 2.5
    x_hat, f, _, _ = sae(x_ND / scale)
    folded = sae.to_sae(scale, dtype=torch.float64)
    torch.testing.assert_close(folded.encode(x_ND.double()), f.double().detach(), rtol=1e-5, atol=1e-6)
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
