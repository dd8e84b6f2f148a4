"""Several topics at once: a merged selection clamps exactly the sum of the topics' edits, the cross-topic
table shows each topic's features acting on its own questions only, and RMU keeps one seeded control
vector per forget corpus, used for that corpus's batches."""

from __future__ import annotations

import copy
import dataclasses

import pandas as pd
import pytest
import torch
from test_intervene import HOOK, FakeSuite, random_sae
from test_screen import FORGET, RETAIN, LogitSuite, planted_sae

from unlearn.clamp.intervene import clamped, feature_edit
from unlearn.clamp.topics import merge_selections, read_topics
from unlearn.errors import UnlearnError
from unlearn.hooks import edit_with_inputs
from unlearn.results import mark_complete, read_json, write_json

A, TYP_A = [1, 4, 7], [0.5, 1.0, 2.0]
B, TYP_B = [2, 8], [3.0, 0.25]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_selection(root, name, sae_path, topics: dict[str, tuple[list[int], list[float]]]):
    sel = root / "select-features" / name
    write_json(sel / "features.json", {"sae": str(sae_path), "hook": HOOK, "rule": {"retain_threshold": 0.01},
               "topics": {t: {"features": f, "typical_activation": typ,
                              "controls": {"controls": [30 - i for i in range(len(f))],
                                           "control_typical_activation": [1.0] * len(f)}}
                          for t, (f, typ) in topics.items()}})  # fmt: skip
    write_json(sel / "config.json", {"command": "select-features"})
    mark_complete(sel)
    return sel


def test_two_topic_clamp_equals_the_sum_of_the_two_edits(tiny, tmp_path, monkeypatch):
    from unlearn.clamp.intervene import InterveneConfig, run_intervene

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    lm = tiny("gemma3")
    sae = random_sae(64, 32, "standard", dtype=torch.float32, hook_name=HOOK)
    with torch.no_grad():
        sae.b_enc.fill_(0.3)  # the chosen features fire at many tokens
    path = sae.save(tmp_path / "sae")
    multi = write_selection(tmp_path, "multi", path, {"bio": (A, TYP_A), "chem": (B, TYP_B)})
    a = write_selection(tmp_path, "a", path, {"bio": (A, TYP_A)})
    b = write_selection(tmp_path, "b", path, {"chem": (B, TYP_B)})
    merged = read_topics(f"{a},{b}")
    assert merged.features == [1, 2, 4, 8, 7] and merged.typical == [0.5, 3.0, 1.0, 0.25, 2.0]
    assert merged.topic == "bio+chem" and merged.controls == [30, 30, 29, 29, 28]
    same = read_topics(multi, "bio,chem")
    assert (same.features, same.typical, same.topic) == (merged.features, merged.typical, merged.topic)

    inputs = lm.tokenizer(["The heart pumps blood.", "Acids give protons to water."], return_tensors="pt",
                          padding=True)  # fmt: skip
    bos = lm.tokenizer.bos_token_id
    val_a = torch.tensor([-20.0 * t for t in TYP_A])
    val_b = torch.tensor([-20.0 * t for t in TYP_B])

    def both(x, seen):  # the two topics' edits, each computed on the same activation, added
        protect = seen["input_ids"] == bos
        return (
            x
            + (clamped(sae, x, A, "clamp", val_a, protect) - x)
            + (clamped(sae, x, B, "clamp", val_b, protect) - x)
        )

    with torch.no_grad():
        plain = lm.model(**inputs).logits
        with feature_edit(
            lm.model, sae, merged.features, "clamp", torch.tensor([-20.0 * t for t in merged.typical])
        ):
            joint = lm.model(**inputs).logits
        with edit_with_inputs(lm.model, HOOK, both):
            summed = lm.model(**inputs).logits
        with feature_edit(lm.model, sae, A, "clamp", val_a):
            only_a = lm.model(**inputs).logits
    torch.testing.assert_close(joint, summed, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(joint, only_a, atol=1e-3) and not torch.allclose(only_a, plain, atol=1e-3)

    # intervene clamps the merged ranking with aligned per-feature values
    run = run_intervene(InterveneConfig(features=f"{a},{b}", n_features=[5], scales=[-20.0], clamp_unit="typical",
                                        controls=[]), lm=lm, sae=sae, suite=FakeSuite(lm))  # fmt: skip
    point = read_json(run / "points" / "clamp_n5_s-20.json")
    assert point["features"] == [1, 2, 4, 8, 7] and point["clamp_values"] == [
        -10.0,
        -60.0,
        -20.0,
        -5.0,
        -40.0,
    ]
    assert read_json(run / "config.json")["topic"] == "bio+chem"


def test_merge_keeps_an_overlapping_feature_once_and_refuses_other_saes(tmp_path, monkeypatch):
    from unlearn.clamp.select import Selection

    def sel(topic, feats, sae="s"):
        return Selection(feats, sae, HOOK, topic, 0.01, "ratio", f"{topic}.json", typical=[float(f) for f in feats],
                         controls=[f + 100 for f in feats], control_typical=[1.0] * len(feats))  # fmt: skip

    m = merge_selections([sel("bio", [1, 4, 6]), sel("chem", [4, 8])])
    assert (
        m.features == [1, 4, 8, 6]
        and m.typical == [1.0, 4.0, 8.0, 6.0]
        and m.controls == [101, 104, 108, 106]
    )
    with pytest.raises(UnlearnError, match="different saes"):
        merge_selections([sel("bio", [1]), sel("chem", [2], sae="other")])
    with pytest.raises(UnlearnError, match="one topic per selection"):
        read_topics("x,y,z", "bio,chem")


def test_cross_topic_table_shows_each_topic_forgetting_its_own_questions(tiny, tmp_path, monkeypatch):
    from unlearn.clamp.topics import CrossTopicConfig, run_cross_topic

    monkeypatch.setenv("UNLEARN_RESULTS", str(tmp_path))
    lm = tiny("gemma3")
    chem = ["The ATP gives energy.", "The ATP is made.", "The ATP moves."]
    texts = FORGET + RETAIN + chem
    sae = planted_sae(lm, " heart", 5, texts=texts)
    sae = planted_sae(lm, " ATP", 6, sae=sae, texts=texts)
    sel = write_selection(tmp_path, "two", sae.save(tmp_path / "sae"), {"bio": ([5, 11], [1.0, 1.0]),
                                                                         "chem": ([6, 12], [1.0, 1.0])})  # fmt: skip
    suite = LogitSuite(
        lm, {"bio-q": ("forget", FORGET), "chem-q": ("forget", chem), "retain-q": ("retain", RETAIN)}
    )
    cfg = CrossTopicConfig(features=str(sel), forget_tasks=["bio-q", "chem-q"], n_features=2, scale=-30.0,
                           clamp_unit="typical", run_id="x")  # fmt: skip
    run = run_cross_topic(cfg, lm=lm, sae=sae, suite=suite)
    frame = pd.read_csv(run / "cross.csv").set_index(["clamped", "questions"])
    acc = frame["acc"]
    assert acc["unhooked", "bio"] == acc["unhooked", "chem"] == acc["unhooked", "retain"] == 1.0
    assert acc["bio", "bio"] == 0.0 and acc["bio", "chem"] == 1.0 and acc["bio", "retain"] == 1.0
    assert acc["chem", "chem"] == 0.0 and acc["chem", "bio"] == 1.0
    assert acc["bio+chem", "bio"] == acc["bio+chem", "chem"] == 0.0 and acc["bio+chem", "retain"] == 1.0
    assert frame.loc[("bio", "bio"), "delta"] == -1.0 and frame.loc[("bio", "chem"), "delta"] == 0.0
    cross = read_json(run / "cross.json")
    assert cross["topics"] == ["bio", "chem"] and cross["states"]["bio+chem"]["features"] == [5, 6, 11, 12]
    controls = ["bio ctrl-features", "chem ctrl-features", "bio+chem ctrl-features"]
    assert suite.calls == ["unhooked", "clamp bio", "clamp chem", "clamp bio+chem"] + [
        f"clamp {c}" for c in controls
    ]
    assert cross["states"]["bio ctrl-features"]["features"] == [30, 29]  # the selection's own controls
    assert cross["states"]["bio+chem ctrl-features"]["features"] == [30, 29]  # merged, each control once
    for c in controls:  # the planted topic features are not among them: the controls change nothing here
        assert all(acc[c, g] == 1.0 for g in ("bio", "chem", "retain"))
    cfg = dataclasses.replace(cfg, controls=False, run_id="y")
    suite.calls.clear()
    run_cross_topic(cfg, lm=lm, sae=sae, suite=suite)
    assert suite.calls == ["unhooked", "clamp bio", "clamp chem", "clamp bio+chem"]


# ---------------------------------------------------------------- RMU, one control vector per topic


def test_rmu_has_one_seeded_control_vector_per_corpus_and_uses_it_for_that_corpus(tiny, monkeypatch):
    from unlearn.rmu.run import RMUConfig, train_rmu
    from unlearn.rmu.train import DEFAULT_PARAM_PATTERN, RMUTrainer, rmu_mse, steering_vectors

    base = tiny("gemma2")
    lm = type(base)(copy.deepcopy(base.model), base.tokenizer, base.setup)
    bio = [["The heart pumps blood.", "Cells divide."], ["A virus infects cells."], ["Genes code proteins."]]
    chem = [["Acids give protons."], ["Salt dissolves in water.", "Bases take protons."], ["Metals conduct."]]
    retain = [["History of Rome."], ["The river flows."], ["Maps of the city."]]
    cfg = RMUConfig(layer=2, update_layers=[0, 1, 2], param_pattern=DEFAULT_PARAM_PATTERN, steering_coeff=20.0,
                    alpha=10.0, lr=1e-3, max_length=24, mask_padding=False, mask_bos=False, seed=7)  # fmt: skip
    source_of = {t: i for i, corpus in enumerate((bio, chem)) for batch in corpus for t in batch}
    seen = []
    orig = RMUTrainer.step

    def spy(self, forget, retain_in, topic=0):
        texts = lm.tokenizer.batch_decode(forget["input_ids"], skip_special_tokens=True)
        src = {source_of[t] for t in texts}
        assert len(src) == 1  # a batch comes from one corpus
        (src,) = src
        acts = self.acts(forget, grad=False)
        want = rmu_mse(acts, self.control_vecs[src]).item()
        other = rmu_mse(acts, self.control_vecs[1 - src]).item()
        got = orig(self, forget, retain_in, topic)
        seen.append(src)
        assert got.forget == pytest.approx(want, rel=1e-5) and abs(got.forget - other) > 1e-3 * want
        return got

    monkeypatch.setattr(RMUTrainer, "step", spy)
    trainer, history = train_rmu(lm, cfg, [bio, chem], [retain, retain], steps=6)
    assert seen == [0, 1, 0, 1, 0, 1] and len(history) == 6  # batches cycle over the corpora
    d = lm.model.config.hidden_size
    vecs = steering_vectors(d, 20.0, 2, seed=7)
    assert len(trainer.control_vecs) == 2
    assert all(torch.equal(v, w) for v, w in zip(trainer.control_vecs, vecs, strict=True))
    assert not torch.equal(vecs[0], vecs[1]) and not torch.equal(
        vecs[0], steering_vectors(d, 20.0, 2, seed=8)[0]
    )
