"""SAE maths against a float64 numpy reference, the on-disk formats, the registry and every user error."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

from unlearn.errors import UnlearnError
from unlearn.hooks import check_compatible
from unlearn.sae import loaders as sae_loaders
from unlearn.sae.loaders import load_sae
from unlearn.sae.model import SAE

D_IN, D_SAE, K = 12, 40, 5
ARCHS = ["jumprelu", "standard", "topk"]


def random_params(seed: int = 0, d_in: int = D_IN, d_sae: int = D_SAE) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(d_in, d_sae)) / np.sqrt(d_in),
        "W_dec": rng.normal(size=(d_sae, d_in)) / np.sqrt(d_sae),
        "b_enc": rng.normal(size=d_sae) * 0.1,
        "b_dec": rng.normal(size=d_in) * 0.5,
        "threshold": rng.uniform(0.05, 0.6, size=d_sae),
    }


def make_sae(arch: str, params: dict, apply_b_dec: bool, dtype=torch.float64) -> SAE:
    sae = SAE(
        D_IN,
        D_SAE,
        arch,
        k=K if arch == "topk" else None,
        apply_b_dec_to_input=apply_b_dec,
        hook_name="blocks.3.hook_resid_post",
        dtype=dtype,
    )
    with torch.no_grad():
        for name in ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if arch == "jumprelu" else []):
            getattr(sae, name).copy_(torch.from_numpy(params[name]))
    return sae


def np_encode(x: np.ndarray, p: dict, arch: str, apply_b_dec: bool) -> np.ndarray:
    """Independent reference: Gemma Scope / SAELens / Gao et al. definitions written out in numpy."""
    pre = (x - p["b_dec"] if apply_b_dec else x) @ p["W_enc"] + p["b_enc"]
    if arch == "jumprelu":
        return np.where(pre > p["threshold"], np.maximum(pre, 0), 0.0)
    if arch == "standard":
        return np.maximum(pre, 0)
    out = np.zeros_like(pre)
    flat_pre, flat_out = pre.reshape(-1, pre.shape[-1]), out.reshape(-1, pre.shape[-1])
    for row in range(flat_pre.shape[0]):
        top = np.argsort(-flat_pre[row])[:K]
        flat_out[row, top] = np.maximum(flat_pre[row, top], 0)
    return out


def np_decode(f: np.ndarray, p: dict) -> np.ndarray:
    return f @ p["W_dec"] + p["b_dec"]


@pytest.fixture
def x_BTD() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(3, 7, D_IN)) * 2


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("apply_b_dec", [False, True])
def test_encode_decode_match_numpy(arch, apply_b_dec, x_BTD):
    p = random_params()
    sae = make_sae(arch, p, apply_b_dec)
    f = sae.encode(torch.from_numpy(x_BTD))
    ref = np_encode(x_BTD, p, arch, apply_b_dec)
    assert f.shape == (3, 7, D_SAE)
    np.testing.assert_allclose(f.detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    assert 0 < (ref > 0).mean() < 1  # the test data exercises both active and inactive features
    np.testing.assert_allclose(sae.decode(f).detach().numpy(), np_decode(ref, p), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sae(torch.from_numpy(x_BTD)).detach().numpy(), np_decode(ref, p), atol=1e-12)
    if arch == "topk":
        assert ((f > 0).sum(-1) <= K).all()
    if arch == "jumprelu":  # the threshold matters: plain ReLU would give more active features
        assert (ref > 0).sum() < (np_encode(x_BTD, p, "standard", apply_b_dec) > 0).sum()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("apply_b_dec", [False, True])
def test_encode_subset_equals_encode_columns(arch, apply_b_dec, x_BTD):
    sae = make_sae(arch, random_params(2), apply_b_dec)
    x = torch.from_numpy(x_BTD)
    idx = [0, 5, 17, 39, 5]
    full = sae.encode(x)
    sub = sae.encode_subset(x, idx)
    assert sub.shape == (3, 7, len(idx))
    torch.testing.assert_close(sub, full[..., idx], rtol=1e-12, atol=1e-12)
    assert (full[..., idx] > 0).any()


def test_dtype_contract_returns_sae_dtype(x_BTD):
    sae = make_sae("jumprelu", random_params(), False, dtype=torch.float32)
    out = sae.encode(torch.from_numpy(x_BTD))  # float64 input
    assert out.dtype == torch.float32 and sae.decode(out).dtype == torch.float32


def test_gemma_scope_npz_round_trip(tmp_path, x_BTD):
    p = {k: v.astype(np.float32) for k, v in random_params(3).items()}
    np.savez(tmp_path / "params.npz", **p)  # exactly the hub's key names and shapes
    for spec in (tmp_path / "params.npz", tmp_path):  # the file or the folder holding it
        sae = load_sae(spec, hook_name="blocks.3.hook_resid_post")
        assert sae.architecture == "jumprelu" and sae.apply_b_dec_to_input is False
        assert sae.dtype == torch.float32 and (sae.d_in, sae.d_sae) == (D_IN, D_SAE)
        for name, arr in p.items():
            np.testing.assert_array_equal(getattr(sae, name).detach().numpy(), arr)
    f = sae.encode(torch.from_numpy(x_BTD)).double().numpy()
    ref = np_encode(x_BTD, {k: v.astype(np.float64) for k, v in p.items()}, "jumprelu", False)
    np.testing.assert_allclose(f, ref, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("apply_b_dec", [False, True])
def test_saelens_folder_round_trip(tmp_path, arch, apply_b_dec, x_BTD):
    sae = make_sae(arch, random_params(4), apply_b_dec)
    sae.save(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post" and cfg["architecture"] == arch
    for spec in (
        tmp_path / "sae",
        tmp_path / "sae" / "cfg.json",
        tmp_path / "sae" / "sae_weights.safetensors",
    ):
        back = load_sae(spec)
        assert (back.architecture, back.k, back.apply_b_dec_to_input, back.hook_name, back.dtype) == (
            arch,
            sae.k,
            apply_b_dec,
            "blocks.3.hook_resid_post",
            torch.float64,
        )
        x = torch.from_numpy(x_BTD)
        torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=0, atol=0)
    assert load_sae(tmp_path / "sae", dtype=torch.float32, hook_name="h").hook_name == "h"


def test_shipped_paths_resolve_to_the_package_data_never_the_cwd(tmp_path, monkeypatch):
    """Presets name shipped SAEs `shipped:saes/...` (older runs recorded `data/saes/...`); both load from
    the shipped folder ($UNLEARN_DATA here), and a `data/` folder in the working directory does not
    shadow the shipped one unless the user names its path."""
    monkeypatch.setenv("UNLEARN_DATA", str(tmp_path / "shipped"))
    make_sae("topk", random_params(9), False).save(tmp_path / "shipped" / "saes" / "mine")
    monkeypatch.chdir(tmp_path)
    assert load_sae("shipped:saes/mine").architecture == "topk"
    assert load_sae("data/saes/mine").architecture == "topk"  # no ./data/saes/mine: the shipped one
    make_sae("standard", random_params(9), False).save(tmp_path / "data" / "saes" / "mine")
    assert load_sae("shipped:saes/mine").architecture == "topk"  # a cwd data/ never shadows shipped:
    assert load_sae("data/saes/mine").architecture == "standard"  # an explicit existing path wins


def write_legacy_folder(folder, params, **cfg):
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v for k, v in params.items() if k != "threshold"}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))


def test_legacy_saelens_config(tmp_path, x_BTD):
    """Pre-6.0 cfg.json as jbloom's gemma-2b-it SAE has it: hook_point, activation_fn_str, no architecture."""
    p = {k: v.astype(np.float32) for k, v in random_params(5).items()}
    write_legacy_folder(
        tmp_path / "jb",
        p,
        d_in=D_IN,
        d_sae=D_SAE,
        dtype="torch.float32",
        hook_point="blocks.12.hook_resid_post",
        activation_fn_str="relu",
        normalize_activations="none",
    )
    sae = load_sae(tmp_path / "jb")
    assert (sae.architecture, sae.apply_b_dec_to_input, sae.hook_name) == (
        "standard",
        True,
        "blocks.12.hook_resid_post",
    )  # SAELens' pre-6.0 default subtracts b_dec
    ref = np_encode(x_BTD, {k: v.astype(np.float64) for k, v in p.items()}, "standard", True)
    np.testing.assert_allclose(sae.encode(torch.from_numpy(x_BTD)).double().numpy(), ref, atol=1e-5)
    write_legacy_folder(
        tmp_path / "tk",
        p,
        d_in=D_IN,
        d_sae=D_SAE,
        hook_point="blocks.1.hook_resid_pre",
        activation_fn="topk",
        activation_fn_kwargs={"k": 3},
        apply_b_dec_to_input=False,
    )
    sae = load_sae(tmp_path / "tk")
    assert (sae.architecture, sae.k, sae.apply_b_dec_to_input) == ("topk", 3, False)


# --- registry -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("gemma-scope-2b-pt-res/layer_7/width_16k/l0~100", "layer_7/width_16k/average_l0_69"),  # 69 vs 137
        ("gemma-scope-2b-pt-res/layer_3/width_16k/l0~100", "layer_3/width_16k/average_l0_59"),  # 59 vs 142
        (
            "gemma-scope-2b-pt-res/layer_3/width_16k/l0~100.5",
            "layer_3/width_16k/average_l0_59",
        ),  # tie -> sparser
        ("gemma-scope-2b-pt-res/layer_3/width_16k/l0~130", "layer_3/width_16k/average_l0_142"),
        ("gemma-scope-2b-pt-res/layer_25/width_65k/l0~1", "layer_25/width_65k/average_l0_15"),
    ],
)
def test_closest_l0(spec, want):
    entry = sae_loaders.resolve(spec)
    assert entry.sae_id == want and entry.path == want


def test_registry_covers_16k_and_65k_for_all_layers():
    l0s = sae_loaders.load_releases()["gemma-scope-2b-pt-res"]["l0s"]
    for layer in range(26):
        for width in ("16k", "65k"):
            assert len(l0s[f"layer_{layer}/width_{width}"]) >= 4


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """Serve fixture files for `_download`, recording what was asked for."""
    calls: list[tuple[str, str]] = []
    files: dict[str, object] = {}

    def fake(repo_id, filename, revision=None):
        calls.append((repo_id, filename))
        return files[filename]

    monkeypatch.setattr(sae_loaders, "_download", fake)
    return calls, files


def test_hub_gemma_scope(tmp_path, fake_hub):
    calls, files = fake_hub
    p = {k: v.astype(np.float32) for k, v in random_params(6).items()}
    np.savez(tmp_path / "p.npz", **p)
    files["layer_3/width_16k/average_l0_142/params.npz"] = tmp_path / "p.npz"
    files["layer_3/width_16k/average_l0_59/params.npz"] = tmp_path / "p.npz"
    sae = load_sae("gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_142")
    assert calls == [("google/gemma-scope-2b-pt-res", "layer_3/width_16k/average_l0_142/params.npz")]
    assert sae.hook_name == "blocks.3.hook_resid_post" and not sae.apply_b_dec_to_input
    load_sae("gemma-scope-2b-pt-res-canonical/layer_3/width_16k/canonical")
    assert calls[-1] == ("google/gemma-scope-2b-pt-res", "layer_3/width_16k/average_l0_59/params.npz")


def test_hub_jbloom_saelens(tmp_path, fake_hub):
    calls, files = fake_hub
    folder = "gemma_2b_it_blocks.12.hook_resid_post_16384"
    write_legacy_folder(
        tmp_path / "jb", random_params(7), d_in=D_IN, d_sae=D_SAE, hook_point="blocks.12.hook_resid_post"
    )
    files[f"{folder}/cfg.json"] = tmp_path / "jb" / "cfg.json"
    files[f"{folder}/sae_weights.safetensors"] = tmp_path / "jb" / "sae_weights.safetensors"
    sae = load_sae("gemma-2b-it-res-jb/blocks.12.hook_resid_post")
    assert {c[0] for c in calls} == {"jbloom/Gemma-2b-IT-Residual-Stream-SAEs"}
    assert sae.hook_name == "blocks.12.hook_resid_post" and sae.architecture == "standard"


def save_farrell_file(path, params, monkeypatch, **cfg_fields):
    """Write a file the way unlearning_with_saes does: torch.save({'cfg': sae.config.Config, 'state_dict'})."""
    module = types.ModuleType("sae.config")
    Config = type("Config", (), {"__module__": "sae.config"})
    module.Config = Config
    monkeypatch.setitem(sys.modules, "sae", types.ModuleType("sae"))
    monkeypatch.setitem(sys.modules, "sae.config", module)
    cfg = Config()
    cfg.__dict__.update(cfg_fields)
    state = {k: torch.from_numpy(v).float() for k, v in params.items() if k != "threshold"}
    state["b_pre"] = state["b_dec"]
    torch.save({"cfg": cfg, "state_dict": state}, path)
    monkeypatch.delitem(sys.modules, "sae.config")  # loading must not need their package


def test_hub_farrell_pt(tmp_path, fake_hub, monkeypatch, x_BTD):
    calls, files = fake_hub
    p = random_params(8)
    save_farrell_file(
        tmp_path / "s.pt",
        p,
        monkeypatch,
        hook_point="blocks.9.hook_resid_pre",
        d_in=D_IN,
        activation_function="relu",
        subtract_b_dec_from_inputs=True,
        different_output=False,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    name = "jolly-dream-40/sparse_autoencoder_gemma-2b-it_blocks.9.hook_resid_pre_s16384_127995904.pt"
    files[name] = tmp_path / "s.pt"
    sae = load_sae("farrell-gemma-2b-it-res/blocks.9.hook_resid_pre")
    assert calls == [("eoinf/unlearning_saes", name)]
    assert (sae.architecture, sae.apply_b_dec_to_input, sae.hook_name) == (
        "standard",
        True,
        "blocks.9.hook_resid_pre",
    )
    ref = np_encode(
        x_BTD, {k: v.astype(np.float32).astype(np.float64) for k, v in p.items()}, "standard", True
    )
    np.testing.assert_allclose(sae.encode(torch.from_numpy(x_BTD)).double().numpy(), ref, atol=1e-5)


def test_farrell_file_with_code_is_refused(tmp_path, capsys):
    """A pickle that would call an arbitrary function must not run it."""

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"cfg": Evil(), "state_dict": {}}, tmp_path / "evil.pt")
    with pytest.raises(UnlearnError, match="evil.pt"):
        load_sae(tmp_path / "evil.pt")
    assert "pwned" not in capsys.readouterr().out


def test_offline_message(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(**kw):
        raise LocalEntryNotFoundError("cannot reach the hub and the file is not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(UnlearnError) as e:
        load_sae("gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_142")
    msg = str(e.value)
    for part in (
        "google/gemma-scope-2b-pt-res",
        "layer_3/width_16k/average_l0_142/params.npz",
        "unreachable",
        "--sae path/to/params.npz",
        "SAELens folder",
        "HF_HUB_OFFLINE=1",
    ):
        assert part in msg


def test_offline_real_hf_hub(monkeypatch, tmp_path):
    """The real huggingface_hub in offline mode with an empty cache gives the same actionable error."""
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UnlearnError, match="hub is unreachable"):
        sae_loaders._download("google/gemma-scope-2b-pt-res", "layer_3/width_16k/average_l0_142/params.npz")


# --- user errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ("gemma-scope-2b-pt-ress/layer_3/width_16k/canonical", ["SAE release", "gemma-scope-2b-pt-res"]),
        ("gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_100", ["[14, 28, 59, 142, 315]", "l0~100"]),
        ("gemma-scope-2b-pt-res/layer_3/width_16kk/average_l0_59", ["close matches", "layer_3/width_16k/"]),
        ("gemma-scope-2b-pt-res-canonical/layer_3/width_16k/canonicl", ["layer_3/width_16k/canonical"]),
        ("./no/such/params.npz", ["does not exist"]),
        ("data/saes/nope", ["does not exist"]),
    ],
)
def test_bad_spec_messages(spec, needles):
    with pytest.raises(UnlearnError) as e:
        load_sae(spec)
    for needle in needles:
        assert needle in str(e.value)


def test_npz_missing_key_and_corrupt(tmp_path):
    p = random_params()
    del p["threshold"]
    np.savez(tmp_path / "params.npz", **p)
    with pytest.raises(UnlearnError, match=r"params\.npz has no array 'threshold'"):
        load_sae(tmp_path / "params.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(UnlearnError, match=r"cannot read .*bad\.npz"):
        load_sae(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    ("key", "shape"),
    [("W_dec", (D_SAE, D_IN + 1)), ("b_enc", (D_SAE - 1,)), ("b_dec", (3,)), ("threshold", (D_SAE, 1))],
)
def test_shape_mismatch(tmp_path, key, shape):
    p = random_params()
    p[key] = np.zeros(shape)
    np.savez(tmp_path / "params.npz", **p)
    with pytest.raises(UnlearnError, match=f"{key} has shape"):
        load_sae(tmp_path / "params.npz")


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        ({"architecture": "gated"}, "'gated' is not supported; supported: jumprelu, standard, topk"),
        ({"activation_fn_str": "tanh-relu"}, "activation 'tanh-relu'"),
        ({"architecture": "standard", "normalize_activations": "layer_norm"}, "layer_norm"),
        (
            {"architecture": "topk", "k": 3, "rescale_acts_by_decoder_norm": True},
            "rescale_acts_by_decoder_norm",
        ),
    ],
)
def test_unsupported_saelens_configs(tmp_path, cfg, needle):
    write_legacy_folder(tmp_path / "s", random_params(), d_in=D_IN, d_sae=D_SAE, **cfg)
    with pytest.raises(UnlearnError, match=needle.replace("[", r"\[").replace("(", r"\(")):
        load_sae(tmp_path / "s")


def test_missing_or_corrupt_saelens_files(tmp_path):
    write_legacy_folder(tmp_path / "s", random_params(), d_in=D_IN, d_sae=D_SAE)
    (tmp_path / "s" / "sae_weights.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(UnlearnError, match="cannot read .*sae_weights.safetensors"):
        load_sae(tmp_path / "s")
    (tmp_path / "s" / "sae_weights.safetensors").unlink()
    with pytest.raises(UnlearnError, match="weights .* are missing"):
        load_sae(tmp_path / "s")
    (tmp_path / "s" / "cfg.json").write_text("{not json")
    with pytest.raises(UnlearnError, match="cannot read the SAE config"):
        load_sae(tmp_path / "s")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnlearnError, match="don't know how to read"):
        load_sae(tmp_path / "empty")


def test_check_compatible_and_bad_k():
    sae = SAE(2304, 16, "standard")
    with pytest.raises(
        UnlearnError, match=r"SAE d_in 2304 != width 640 of blocks.6.hook_resid_post of gemma-3"
    ):
        check_compatible(sae, 640, "blocks.6.hook_resid_post", "gemma-3")
    check_compatible(sae, 2304, "blocks.6.hook_resid_post")
    with pytest.raises(UnlearnError, match="k=None"):
        SAE(8, 16, "topk")
    with pytest.raises(UnlearnError, match="supported"):
        SAE(8, 16, "gated")  # type: ignore[arg-type]


# --- unit-norm decoder convention ------------------------------------------------------------------------


def uneven_params(arch: str, seed: int = 5) -> tuple[dict, np.ndarray]:
    """Random params whose decoder rows have norms far from 1 (uneven, except topk: one common norm)."""
    p = random_params(seed)
    rng = np.random.default_rng(seed + 1)
    p["W_dec"] /= np.linalg.norm(p["W_dec"], axis=1, keepdims=True)
    n = np.full(D_SAE, 37.0) if arch == "topk" else rng.uniform(0.05, 1200.0, size=D_SAE)
    p["W_dec"] *= n[:, None]
    return p, n


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("apply_b_dec", [False, True])
def test_unit_norm_decoder_is_an_exact_reparametrisation(arch, apply_b_dec, x_BTD):
    p, n = uneven_params(arch)
    sae = make_sae(arch, p, apply_b_dec).unit_norm_decoder()
    np.testing.assert_allclose(sae.W_dec.norm(dim=-1).numpy(), 1.0, rtol=1e-12)
    # the formulas, written out in numpy on the original parameters
    np.testing.assert_allclose(sae.W_dec.numpy(), p["W_dec"] / n[:, None], rtol=1e-12)
    np.testing.assert_allclose(sae.W_enc.numpy(), p["W_enc"] * n[None, :], rtol=1e-12)
    np.testing.assert_allclose(sae.b_enc.numpy(), p["b_enc"] * n, rtol=1e-12)
    if arch == "jumprelu":
        np.testing.assert_allclose(sae.threshold.numpy(), p["threshold"] * n, rtol=1e-12)
    x = torch.from_numpy(x_BTD)
    f_old = np_encode(x_BTD, p, arch, apply_b_dec)
    np.testing.assert_allclose(sae.encode(x).numpy(), f_old * n, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(sae(x).numpy(), np_decode(f_old, p), rtol=1e-10, atol=1e-10)


def test_unit_norm_decoder_refuses_topk_with_uneven_norms():
    p, _ = uneven_params("jumprelu")
    with pytest.raises(UnlearnError, match="topk SAE with unequal decoder norms"):
        make_sae("topk", p, False).unit_norm_decoder()
    p["W_dec"][3] = 0.0
    with pytest.raises(UnlearnError, match=r"rows \[3\] are zero"):
        make_sae("jumprelu", p, False).unit_norm_decoder()


def test_shipped_sae_is_in_the_unit_norm_convention():
    from safetensors import safe_open

    from unlearn.paths import resolve_path
    from unlearn.presets import get_preset

    folder = resolve_path(get_preset("gemma-3-270m").sae)
    weights = folder / "sae_weights.safetensors"
    assert weights.stat().st_size < 6_000_000
    with safe_open(str(weights), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
    assert dtypes == {"W_enc": "F16", "W_dec": "F16", "b_enc": "F32", "b_dec": "F32", "threshold": "F32"}
    sae = load_sae(folder, dtype=torch.float64)
    assert sae.dtype == torch.float64 and sae.hook_name == "blocks.6.hook_resid_post"
    np.testing.assert_allclose(sae.decoder_norms().numpy(), 1.0, atol=2e-3)  # float16 rows
    # Residual-scale inputs (norm ~3,500 as at layer 6): the stored form reconstructs like its exact
    # unit-norm re-parametrisation (a fixed point up to float16 rounding of the rows).
    x_ND = torch.randn(256, sae.d_in, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_ND = x_ND / x_ND.norm(dim=-1, keepdim=True) * 3500 + sae.b_dec
    again = load_sae(folder, dtype=torch.float64).unit_norm_decoder()
    assert (sae.encode(x_ND) > 0).any(-1).all()
    err = (again(x_ND) - sae(x_ND)).norm(dim=-1) / x_ND.norm(dim=-1)
    assert err.max() < 1e-3
