"""Our scorers give lm-eval's answers: same questions, same model object, lm-eval's HFLM + our YAML tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import Q

from unlearn.errors import UnlearnError
from unlearn.eval.lmeval import include_dir, lm_eval_task_name, lmeval_predictions, run_tasks
from unlearn.eval.scoring import make_letter_scorer, score_cloze, score_letter

QUESTIONS = [
    Q(f"Question {i}: which organ or cell part {'pumps blood' if i % 2 else 'holds DNA'}?",
      ["heart", "the nucleus of a cell", "kidney", "ATP"][i % 4:] + ["heart", "the nucleus of a cell", "kidney", "ATP"][: i % 4],
      i % 4, "biology" if i < 8 else "human_aging")
    for i in range(12)
]  # fmt: skip


def same_up_to_shift(ours: np.ndarray, theirs: np.ndarray, atol: float = 2e-4) -> None:
    """Letter logits vs lm-eval log-probs differ by one log-normaliser per prompt."""
    np.testing.assert_allclose(ours - ours[:, :1], theirs - theirs[:, :1], atol=atol)


@pytest.mark.parametrize("chat", [False, True])
def test_letter_matches_lm_eval(tiny, chat):
    lm = tiny("gemma2")
    ours = score_letter(QUESTIONS, lm.tokenizer, make_letter_scorer(lm.model, lm.tokenizer, batch_size=5),
                        chat_template=chat)  # fmt: skip
    theirs = lmeval_predictions(
        lm.model, lm.tokenizer, QUESTIONS, style="letter", chat_template=chat, batch_size=5
    )
    np.testing.assert_array_equal(ours["pred"], theirs["pred"])
    same_up_to_shift(ours["scores"].astype(float), theirs["ll"])


def test_cloze_matches_lm_eval(tiny):
    lm = tiny("gemma3")
    ours = score_cloze(QUESTIONS, lm.model, lm.tokenizer, batch_size=7)
    theirs = lmeval_predictions(lm.model, lm.tokenizer, QUESTIONS, style="cloze", batch_size=4)
    np.testing.assert_allclose(ours["ll"], theirs["ll"], atol=1e-4)
    np.testing.assert_array_equal(ours["pred"], theirs["pred"])
    np.testing.assert_array_equal(ours["pred_norm"], theirs["pred_norm"])


def test_shipped_task_runs_on_shipped_data(tiny, tmp_path):
    """`unlearn/shipped/evals/offline_bio_cloze.yaml` as shipped (data path rewritten) gives the same answers
    as our scorer."""
    from unlearn.data import load_questions

    lm = tiny("gemma2")
    folder = include_dir(tmp_path / "tasks")
    assert "test: questions/" not in (folder / "offline_bio_cloze.yaml").read_text()
    results = run_tasks(
        lm.model, lm.tokenizer, ["offline_bio_cloze"], include_path=folder, limit=6, batch_size=8
    )
    samples = sorted(results["samples"]["offline_bio_cloze"], key=lambda s: s["doc_id"])
    theirs = np.array([[float(r[0]) for r in s["filtered_resps"]] for s in samples])
    ours = score_cloze(load_questions("offline:bio", limit=6), lm.model, lm.tokenizer)
    np.testing.assert_allclose(ours["ll"], theirs, atol=1e-4)
    acc = results["results"]["offline_bio_cloze"]["acc,none"]
    assert acc == pytest.approx(np.mean(ours["pred"] == [s["doc"]["answer"] for s in samples]))


def test_hooked_model_acts_inside_lm_eval(tiny):
    from unlearn import hooks

    lm = tiny("gemma3")
    plain = lmeval_predictions(lm.model, lm.tokenizer, QUESTIONS[:4], style="cloze")
    with hooks.edit(lm.model, "blocks.0.hook_resid_post", lambda x: torch.zeros_like(x)):
        hooked = lmeval_predictions(lm.model, lm.tokenizer, QUESTIONS[:4], style="cloze")
        ours = score_cloze(QUESTIONS[:4], lm.model, lm.tokenizer)
    assert np.abs(plain["ll"] - hooked["ll"]).max() > 1e-3
    np.testing.assert_allclose(ours["ll"], hooked["ll"], atol=1e-4)


def test_task_names_and_errors(tiny):
    assert lm_eval_task_name("wmdp-bio") == "wmdp_bio"
    assert lm_eval_task_name("mmlu:college_biology") == "mmlu_college_biology"
    assert lm_eval_task_name("offline:retain") == "offline_retain_mmlu"
    with pytest.raises(UnlearnError, match="lm-eval task"):
        lm_eval_task_name("my.jsonl")
    lm = tiny("gemma2")
    with pytest.raises(UnlearnError, match="chat template"):
        lmeval_predictions(lm.model, lm.tokenizer, QUESTIONS, style="cloze", chat_template=True)


@pytest.mark.slow
def test_embedded_model_matches_lm_eval():
    """The real Gemma 3 270M on 20 shipped questions: letter and cloze answers equal lm-eval's."""
    from unlearn.data import load_questions
    from unlearn.models import load_model

    lm = load_model("gemma-3-270m", device="cpu")
    questions = load_questions("offline:bio", limit=10) + load_questions("offline:retain", limit=10)
    ours = score_letter(
        questions, lm.tokenizer, make_letter_scorer(lm.model, lm.tokenizer), chat_template=False
    )
    theirs = lmeval_predictions(lm.model, lm.tokenizer, questions, style="letter")
    np.testing.assert_array_equal(ours["pred"], theirs["pred"])
    same_up_to_shift(ours["scores"].astype(float), theirs["ll"], atol=1e-3)
    ours = score_cloze(questions, lm.model, lm.tokenizer)
    theirs = lmeval_predictions(lm.model, lm.tokenizer, questions, style="cloze")
    np.testing.assert_array_equal(ours["pred"], theirs["pred"])
    np.testing.assert_array_equal(ours["pred_norm"], theirs["pred_norm"])
    np.testing.assert_allclose(ours["ll"], theirs["ll"], atol=1e-3)
