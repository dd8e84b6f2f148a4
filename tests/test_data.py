"""Question and corpus loaders: shipped offline data, validation errors, hub calls (patched), offline errors."""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections import Counter
from pathlib import Path

import datasets
import pandas as pd
import pytest

from unlearn import data
from unlearn.data import Question, iter_texts, load_questions, split_by_subject
from unlearn.errors import UnlearnError
from unlearn.paths import shipped_dir

QUESTION_SOURCES = Path(__file__).resolve().parents[1] / "data" / "questions"
"""The question sources and their build script (the built .jsonl files ship in unlearn/shipped/questions)."""

GOOD = {"question": "Which organ pumps blood?", "choices": ["heart", "liver", "kidney", "lung"], "answer": 0}


def _raw_rows(name: str) -> list[dict]:
    """The shipped file read independently of the loader."""
    with open(shipped_dir() / "questions" / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------- offline question sets


MIN_COUNTS = {"bio": 520, "retain": 560, "other": 220}


def _shipped_set(name: str) -> list[Question]:
    """`other` is loaded by path: it is shipped before it is registered as an `offline:` source."""
    if name == "other":
        return load_questions(str(shipped_dir() / "questions" / "other.jsonl"))
    return load_questions(f"offline:{name}")


@pytest.mark.parametrize("name", ["bio", "retain", "other"])
def test_offline_sets_are_well_formed(name):
    qs = _shipped_set(name)
    raw = _raw_rows(name)
    assert len(qs) == len(raw) >= MIN_COUNTS[name]
    assert [q.question for q in qs] == [r["question"] for r in raw]
    assert len({q.question.lower() for q in qs}) == len(qs), "duplicate questions"
    for q in qs:
        assert len({c.strip().lower() for c in q.choices}) == 4 and all(c.strip() for c in q.choices)
    # The correct index is spread evenly, so position bias cannot pass for knowledge.
    counts = Counter(q.answer for q in qs)
    assert set(counts) == {0, 1, 2, 3} and max(counts.values()) - min(counts.values()) <= 1


def _make_questions():
    spec = importlib.util.spec_from_file_location("make_questions", QUESTION_SOURCES / "make_questions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_sets_are_the_rebuild_of_their_sources():
    """The .jsonl files are byte-identical to a rebuild from src/<set>/*.txt (nobody edited them by hand),
    every source line is in its set with its correct answer, and no question repeats across sets."""
    mq = _make_questions()
    src = QUESTION_SOURCES / "src"
    built = mq.build(src)
    assert {"bio", "retain", "other"} <= set(built)
    all_questions = []
    for name, rows in built.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        assert (shipped_dir() / "questions" / f"{name}.jsonl").read_text(encoding="utf-8") == text
        by_question = {r["question"]: r for r in rows}
        n_lines = 0
        for path in sorted((src / name).glob("*.txt")):
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    question, correct, *wrong = (p.strip() for p in line.split("|"))
                    row = by_question[question]
                    assert row["choices"][row["answer"]] == correct and sorted(row["choices"]) == sorted(
                        [correct, *wrong]
                    )
                    assert row["subject"] == {"bio": "biology", "chem": "chemistry"}.get(name, path.stem)
                    n_lines += 1
        assert n_lines == len(rows)
        all_questions += [r["question"].lower() for r in rows]
    assert len(set(all_questions)) == len(all_questions)


def test_make_questions_errors_name_file_and_line(tmp_path):
    mq = _make_questions()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.txt").write_text("# comment\n\nQ1?|w|x|y|z\n", encoding="utf-8")
    (tmp_path / "b" / "y.txt").write_text("Q2?|w|x|y|z\nq1?|a|b|c|d\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"y\.txt:2: duplicate question \(first at .*x\.txt:3\)"):
        mq.build(tmp_path)
    (tmp_path / "b" / "y.txt").write_text("Q2?|w|x|y|z\nQ3?|a|b|c\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"y\.txt:2: expected 5 non-empty fields"):
        mq.build(tmp_path)
    (tmp_path / "b" / "y.txt").write_text("Q2?|w|x|y|z\nQ3?|a|b|c|A\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"y\.txt:2: the 4 choices are not distinct"):
        mq.build(tmp_path)
    (tmp_path / "b" / "y.txt").write_text("".join(f"Q{i}b?|a{i}|b|c|d\n" for i in range(9)), encoding="utf-8")
    rows = mq.build(tmp_path)
    assert [r["subject"] for r in rows["b"]] == ["y"] * 9 and mq.build(tmp_path) == rows
    assert sorted(Counter(r["answer"] for r in rows["b"]).values()) == [2, 2, 2, 3]


def test_retain_subjects_and_subset():
    groups = split_by_subject(load_questions("offline:retain"))
    assert len(groups) >= 5 and all(len(v) >= 90 for v in groups.values())
    assert {"human_aging", "us_history", "geography", "computer_science"} <= set(groups)
    raw = _raw_rows("retain")
    aging = load_questions("offline:retain/human_aging")
    assert [q.index for q in aging] == [i for i, r in enumerate(raw) if r["subject"] == "human_aging"]
    assert all(
        raw[q.index]["question"] == q.question and q.source == "offline:retain/human_aging" for q in aging
    )
    assert load_questions("offline:retain/human_aging", limit=3) == aging[:3]


def test_offline_errors():
    with pytest.raises(UnlearnError, match="subjects: .*geography"):
        load_questions("offline:retain/astrology")
    with pytest.raises(UnlearnError, match="offline:retain/<subject>"):
        load_questions("offline:chemistry")
    with pytest.raises(UnlearnError, match="single split"):
        load_questions("offline:bio", split="validation")
    with pytest.raises(UnlearnError, match="Valid forms: wmdp-bio"):
        load_questions("wmdp-physics")


# --------------------------------------------------------------------------- validation of local files


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({**GOOD, "choices": ["a", "b", "c"]}, "list of 4 strings"),
        ({**GOOD, "choices": ["a", "b", "c", 4]}, "every choice must be a string"),
        ({**GOOD, "answer": 4}, "integer 0-3"),
        ({**GOOD, "answer": "A"}, "integer 0-3"),
        ({**GOOD, "answer": True}, "integer 0-3"),
        ({**GOOD, "question": "  "}, "'question' is missing or empty"),
        ({"choices": GOOD["choices"], "answer": 0}, "'question' is missing"),
    ],
)
def test_invalid_row_names_file_and_row(tmp_path, bad, problem):
    path = _write_jsonl(tmp_path / "qs.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(UnlearnError, match="row 3 is invalid") as info:
        load_questions(path)
    assert path in str(info.value) and problem in str(info.value)


def test_local_formats_agree(tmp_path):
    rows = [
        {**GOOD, "subject": "anatomy"},
        {"question": "2+2?", "choices": ["4", "5", "6", "7"], "answer": 0},
    ]
    from_jsonl = load_questions(_write_jsonl(tmp_path / "q.jsonl", rows))
    (tmp_path / "q.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "q.parquet")
    for path in (tmp_path / "q.json", tmp_path / "q.parquet"):
        got = load_questions(str(path))
        assert [(q.question, q.choices, q.answer, q.index) for q in got] == [
            (q.question, q.choices, q.answer, q.index) for q in from_jsonl
        ]
    assert from_jsonl[0].subject == "anatomy" and from_jsonl[1].subject is None
    with pytest.raises(UnlearnError, match="File not found"):
        load_questions(str(tmp_path / "missing.jsonl"))


def test_invalid_json_line_names_row(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(UnlearnError, match="row 2 is not valid JSON"):
        load_questions(str(path))


# --------------------------------------------------------------------------- hub paths (patched)


class FakeHub:
    """Stands in for `datasets.load_dataset`: records each call and returns canned rows."""

    def __init__(self, rows=None, error: Exception | None = None):
        self.rows, self.error, self.calls = rows or [], error, []

    def __call__(self, path, name=None, *, split=None, **kwargs):
        self.calls.append((path, name, split))
        if self.error:
            raise self.error
        return list(self.rows)


def test_wmdp_and_mmlu_request_exact_dataset(monkeypatch):
    hub = FakeHub([GOOD, {**GOOD, "answer": 2}])
    monkeypatch.setattr(datasets, "load_dataset", hub)
    qs = load_questions("wmdp-bio")
    assert hub.calls == [("cais/wmdp", "wmdp-bio", "test")]
    assert [q.answer for q in qs] == [0, 2] and qs[0].subject is None and qs[1].index == 1
    assert list(split_by_subject(qs)) == ["wmdp-bio"]
    load_questions("wmdp-cyber", limit=1)
    load_questions("mmlu:high_school_us_history")
    load_questions("mmlu:human_aging", split="validation")
    assert hub.calls[1:] == [
        ("cais/wmdp", "wmdp-cyber", "test"),
        ("cais/mmlu", "high_school_us_history", "test"),
        ("cais/mmlu", "human_aging", "validation"),
    ]


def test_hub_rows_are_validated(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", FakeHub([GOOD, {**GOOD, "answer": 7}]))
    with pytest.raises(UnlearnError, match="wmdp-chem: row 2 is invalid"):
        load_questions("wmdp-chem")


def test_text_hub_sources(monkeypatch):
    hub = FakeHub([{"text": ""}, {"text": " = Title = \n"}, {"text": "  \n"}, {"text": "Body text.\n"}])
    monkeypatch.setattr(datasets, "load_dataset", hub)
    assert list(iter_texts("wikitext")) == [" = Title = \n", "Body text.\n"]
    assert list(iter_texts("wmdp-corpora:bio-retain-corpus", limit_docs=1)) == [" = Title = \n"]
    assert hub.calls == [
        ("wikitext", "wikitext-2-raw-v1", "test"),
        ("cais/wmdp-corpora", "bio-retain-corpus", "train"),
    ]


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("Couldn't reach 'cais/wmdp' on the Hub (OfflineModeIsEnabled)"),
        FileNotFoundError("Couldn't find any data file at /somewhere"),
    ],
)
def test_offline_hub_error_is_actionable(monkeypatch, error):
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(error=error))
    for call, dataset_id in [
        (lambda: load_questions("wmdp-bio"), "cais/wmdp"),
        (lambda: list(iter_texts("wikitext")), "wikitext"),
    ]:
        with pytest.raises(UnlearnError) as info:
            call()
        msg = str(info.value)
        assert f"'{dataset_id}'" in msg and "could not be reached" in msg
        assert "HF_HUB_OFFLINE=1" in msg and ".jsonl" in msg and "offline:bio" in msg


def test_real_datasets_offline_failure_is_caught(monkeypatch):
    """The real library in offline mode (conftest sets HF_HUB_OFFLINE=1) must hit our except clause."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnlearnError, match="could not be reached"):
        data._hub_rows("unlearn-tests/no-such-dataset", "default", "test")


def test_gated_and_unknown_text_sources():
    with pytest.raises(UnlearnError, match="gated.*'text' field"):
        list(iter_texts("wmdp-bio-forget"))
    with pytest.raises(UnlearnError, match="Valid forms: offline:bio-forget"):
        list(iter_texts("pubmed"))
    with pytest.raises(UnlearnError, match="Unknown offline corpus"):
        list(iter_texts("offline:chemistry"))


# --------------------------------------------------------------------------- corpora


def test_offline_corpora():
    docs = {name: list(iter_texts(f"offline:{name}")) for name in data.OFFLINE_CORPORA}
    for name, texts in docs.items():
        assert texts and all(t.strip() for t in texts), name
    assert sum(len(t.split()) for t in docs["bio-forget"]) > 200_000
    assert sum(len(t.split()) for t in docs["retain"]) > 200_000
    # Held-out documents are ~5% and never appear in the training split.
    for name in ("bio-forget", "retain"):
        held = docs[f"{name}-heldout"]
        assert 0.03 < len(held) / (len(held) + len(docs[name])) < 0.07
        assert not set(held) & set(docs[name])

    # Forget text is about biology, retain text is not (a keyword count as an independent check).
    def bio_rate(texts):
        words = " ".join(texts).lower().split()
        return sum(
            w.strip(".,;:") in {"animal", "plant", "species", "genus", "mammal", "leaves"} for w in words
        ) / len(words)

    assert bio_rate(docs["bio-forget"]) > 20 * bio_rate(docs["retain"])
    assert list(iter_texts("offline:bio-forget", limit_docs=5)) == docs["bio-forget"][:5]


def test_local_text_files(tmp_path):
    rows = [{"text": "first doc"}, {"text": "second doc", "source": "x"}]
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    assert list(iter_texts(str(tmp_path / "c.jsonl.gz"))) == ["first doc", "second doc"]
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"title": "no text"}])
    with pytest.raises(UnlearnError, match="line 2 has no string field 'text'"):
        list(iter_texts(bad))
    (tmp_path / "c.txt").write_text("para one\nstill one\n\n\npara two\n")
    assert list(iter_texts(str(tmp_path / "c.txt"))) == ["para one\nstill one", "para two"]


def test_questions_as_text():
    qs = load_questions("offline:bio", limit=4)
    texts = list(iter_texts("questions:offline:bio", limit_docs=4))
    assert len(texts) == 4
    for q, t in zip(qs, texts, strict=True):
        assert t.startswith(q.question) and f"\nA. {q.choices[0]}" in t and t.endswith(f"\nD. {q.choices[3]}")


def test_question_is_immutable_record():
    q = load_questions("offline:bio", limit=1)[0]
    assert isinstance(q, Question) and q.source == "offline:bio" and q.index == 0
    with pytest.raises(AttributeError):
        q.answer = 3  # frozen: cached known-subsets may key on it


def test_data_relative_paths_resolve_from_any_cwd(tmp_path, monkeypatch):
    """Presets name shipped files as `data/...`; they must load from outside the repo too."""
    monkeypatch.chdir(tmp_path)
    by_path = load_questions("data/questions/bio.jsonl")
    assert [q.question for q in by_path] == [q.question for q in load_questions("offline:bio")]
    assert next(iter_texts("data/corpora/retain-heldout.jsonl.gz")) == next(
        iter_texts("offline:retain-heldout")
    )


def test_dev_test_split_is_stratified_disjoint_and_order_free():
    from unlearn.data import load_questions, split_dev_test

    questions = load_questions("offline:retain")
    parts = split_dev_test(questions)
    dev, test = ({(q.subject, q.question) for q in parts[p]} for p in ("dev", "test"))
    assert not dev & test and len(dev | test) == len(questions)
    for subject in {q.subject for q in questions}:
        n_dev = sum(q.subject == subject for q in parts["dev"])
        n_test = sum(q.subject == subject for q in parts["test"])
        assert n_dev - n_test in (0, 1)
    # independent of file order: the same split from the reversed list
    again = split_dev_test(list(reversed(questions)))
    assert [q.index for q in again["dev"]] == [q.index for q in parts["dev"]]
    assert [q.index for q in load_questions("offline:retain@test")] == [q.index for q in parts["test"]]


def test_unknown_split_suffix_is_an_error():
    import pytest

    from unlearn.data import load_questions
    from unlearn.errors import UnlearnError

    with pytest.raises(UnlearnError, match="@dev or @test"):
        load_questions("offline:bio@train")
