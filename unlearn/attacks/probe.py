"""Linear probes: is the right answer still decodable from residual activations?

If a probe trained on an unlearned model's activations still tells the correct choice from the
distractors, the knowledge is hidden, not removed. Features: the residual stream (`hook_resid_post`) at
the last token of `Question: …\\nAnswer: <choice>` (the cloze layout), at several layers; label: whether
the choice is correct. A question's prediction is the choice with the highest probe probability (one
logistic regression shared by all choices, scikit-learn), so chance is 0.25.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from unlearn.eval.prompts import cloze_context, cloze_continuation, encode_pair
from unlearn.hooks import forward_to


def choice_activations(
    model: nn.Module, tokenizer, questions: Sequence, layers: Sequence[int], *, batch_size: int = 16
) -> np.ndarray:
    """(N questions, 4 choices, L layers, D) float32: residual after each layer at the last token of
    prompt + choice, for the model as it is now (hooks included)."""
    names = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    seqs = []
    for q in questions:
        for c in q.choices:
            ctx, cont = encode_pair(cloze_context(q.question), cloze_continuation(c), tokenizer)
            seqs.append(ctx + cont)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id or 0
    out = []
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        width = max(map(len, chunk))
        ids_BT = torch.tensor([s + [pad] * (width - len(s)) for s in chunk], device=device)
        mask_BT = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk], device=device)
        last_B = torch.tensor([len(s) - 1 for s in chunk], device=device)
        with torch.inference_mode():
            acts = forward_to(model, names, input_ids=ids_BT, attention_mask=mask_BT)
        rows = torch.arange(len(chunk), device=device)
        out.append(torch.stack([acts[n][rows, last_B].float().cpu() for n in names], dim=1))  # (B, L, D)
    x = torch.cat(out).numpy()
    return x.reshape(len(questions), 4, len(layers), -1)


def probe_accuracy(
    x_train_NCD: np.ndarray,
    answer_train_N: np.ndarray,
    x_test_MCD: np.ndarray,
    answer_test_M: np.ndarray,
    *,
    seed: int = 0,
    c: float = 1.0,
) -> float:
    """Fit one logistic regression on (choice activation -> is correct) over the training questions and
    return the test accuracy of picking each question's most probable choice."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n, n_choices, d = x_train_NCD.shape
    y = (np.arange(n_choices)[None, :] == np.asarray(answer_train_N)[:, None]).ravel()
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    clf.fit(x_train_NCD.reshape(n * n_choices, d), y)
    m = x_test_MCD.shape[0]
    p_MC = clf.predict_proba(x_test_MCD.reshape(m * n_choices, d))[:, 1].reshape(m, n_choices)
    return float((p_MC.argmax(axis=1) == np.asarray(answer_test_M)).mean())
