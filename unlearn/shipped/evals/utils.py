"""lm-eval hooks for the letter protocol: the score of a letter is the larger of its "A" / " A" log-probs."""


def letter_scores(lls):
    """8 log-likelihoods ordered A, " A", B, " B", ... -> 4 letter scores."""
    return [max(lls[2 * k], lls[2 * k + 1]) for k in range(4)]


def process_letter(doc, results):
    scores = letter_scores([ll for ll, _ in results])
    pred = max(range(4), key=lambda k: scores[k])
    return {"acc": float(pred == int(doc["answer"]))}
