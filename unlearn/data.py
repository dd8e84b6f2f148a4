"""Question sets and text corpora, from the HuggingFace hub or from files shipped in `data/`.

Every loader takes one *source* string so that configs and the CLI can name data uniformly:

questions (`load_questions`)                 texts (`iter_texts`)
  wmdp-bio | wmdp-chem | wmdp-cyber            offline:bio-forget | offline:retain
  mmlu:<subject>                               offline:bio-forget-heldout | offline:retain-heldout
  offline:bio | offline:chem | offline:other   offline:{bio,retain,chem}-statements (+ -heldout)
  offline:retain | offline:retain/<subject>    wikitext | wmdp-corpora:<config> | wmdp-bio-forget
  offline:other/<subject>                      questions:<question source>
  <path>.jsonl | .json | .parquet              <path>.jsonl | .jsonl.gz | .txt
  any of these + `@dev` / `@test`              questions:<question source>@dev

A question source ending in `@dev` or `@test` keeps one half of a deterministic, subject-stratified
split (`split_dev_test`): features, clamp values and RMU are tuned on dev, results reported on test.

Hub ids, configs and splits follow the WMDP paper's RMU code and Farrell et al. 2024 (arXiv 2410.19278):
`cais/wmdp` (split test), `cais/mmlu` (split test), `cais/wmdp-corpora` (split train, field text),
WikiText `wikitext-2-raw-v1` split test. The offline sets exist because the hub is unreachable on some
machines; see `data/questions/README.md` and `data/corpora/README.md`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import numbers
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearn.errors import UnlearnError
from unlearn.paths import resolve_path, shipped_dir

log = logging.getLogger(__name__)

WMDP_CONFIGS = ("wmdp-bio", "wmdp-chem", "wmdp-cyber")
PARTS = ("dev", "test")
"""The halves of `split_dev_test`, named by a `@dev` / `@test` suffix on a question source."""
OFFLINE_QUESTIONS = {name: f"questions/{name}.jsonl" for name in ("bio", "chem", "retain", "other")}
"""Shipped question sets: two forget topics, the retain subjects, and benign biology-adjacent `other`."""
MULTI_SUBJECT = ("retain", "other")
OFFLINE_CORPORA = {
    name: f"corpora/{name}.jsonl.gz"
    for base in ("bio-forget", "retain", "bio-statements", "retain-statements", "chem-statements")
    for name in (base, f"{base}-heldout")
}
"""WordNet/Python-docs corpora and the same-register statement corpora (data/corpora/README.md)."""
QUESTION_SOURCES_HELP = (
    "wmdp-bio, wmdp-chem, wmdp-cyber, mmlu:<subject> (e.g. mmlu:high_school_us_history), offline:bio, offline:chem, offline:other, "
    "offline:retain, offline:retain/<subject>, or a local .jsonl/.json/.parquet file with fields "
    "question, choices (4 strings), answer (0-3)"
)
TEXT_SOURCES_HELP = (
    "offline:bio-forget, offline:retain, offline:{bio,retain,chem}-statements, any of these + -heldout, wikitext, "
    "wmdp-corpora:<config> (e.g. wmdp-corpora:bio-retain-corpus), wmdp-bio-forget (gated), "
    "questions:<question source> (e.g. questions:wmdp-bio), or a local .jsonl/.jsonl.gz (field text) or .txt file"
)


@dataclass(frozen=True)
class Question:
    """One four-way multiple-choice question (the WMDP/MMLU schema)."""

    question: str
    choices: list[str]
    """Exactly four answer texts, in dataset order."""
    answer: int
    """Index of the correct choice, 0-3."""
    subject: str | None
    """MMLU/offline subject; None for WMDP, whose configs are single-topic."""
    source: str
    """The source string it was loaded from (e.g. `mmlu:human_aging`, `offline:bio`, a path)."""
    index: int
    """Row number in the source (0-based, before filtering and `limit`): a stable id for caches."""


# --------------------------------------------------------------------------- questions


def load_questions(source: str, *, split: str | None = None, limit: int | None = None) -> list[Question]:
    """Load and validate a question set; `split` applies to hub sets only (default `test`).

    `source@dev` / `source@test` keep one half of `split_dev_test` (applied before `limit`)."""
    base, part = split_part(source)
    if part is not None:
        questions = split_dev_test(load_questions(base, split=split))[part]
        return questions[:limit] if limit is not None else questions
    if source in WMDP_CONFIGS:
        rows = _hub_rows("cais/wmdp", source, split or "test")
    elif source.startswith("mmlu:") and source.removeprefix("mmlu:"):
        rows = _hub_rows("cais/mmlu", source.removeprefix("mmlu:"), split or "test")
    elif source.startswith("offline:"):
        _no_split(source, split)
        rows = _offline_question_rows(source)
    elif path := _local_path(source, (".jsonl", ".json", ".parquet")):
        _no_split(source, split)
        rows = list(enumerate(_read_table(path)))
    else:
        raise UnlearnError(f"Unknown question source {source!r}. Valid forms: {QUESTION_SOURCES_HELP}.")
    questions = [_to_question(row, source, index) for index, row in rows]
    if not questions:
        raise UnlearnError(f"{source} holds no questions: pass a file with at least one row.")
    local = not (source in WMDP_CONFIGS or source.startswith("mmlu:"))
    questions = _checked_choices(questions, source, strict=local)
    if local:
        _no_duplicates(questions, source)
    return questions[:limit] if limit is not None else questions


def _checked_choices(questions: list[Question], source: str, *, strict: bool) -> list[Question]:
    """Empty or identical choices make the argmax a tie that picks the first: an error for our own files,
    a warning (and the question dropped) for hub sets, whose rows we cannot fix."""
    kept = []
    for q in questions:
        texts = [c.strip() for c in q.choices]
        problem = (
            "an empty choice" if not all(texts) else "identical choices" if len(set(texts)) < 4 else None
        )
        if problem is None:
            kept.append(q)
        elif strict:
            raise UnlearnError(
                f"{source}: row {q.index + 1} is invalid: it has {problem} ({q.choices!r}); "
                "give four distinct, non-empty choices"
            )
        else:
            log.warning("%s: dropped row %d (%s)", source, q.index + 1, problem)
    return kept


def _no_duplicates(questions: list[Question], source: str) -> None:
    """The same question twice counts twice in accuracy (and lands in both dev and test)."""
    seen: dict[tuple, int] = {}
    for q in questions:
        key = (" ".join(q.question.split()), tuple(c.strip() for c in q.choices))
        if key in seen:
            raise UnlearnError(
                f"{source}: row {q.index + 1} repeats row {seen[key] + 1} (same question and choices); "
                "remove one of them"
            )
        seen[key] = q.index


def split_part(source: str) -> tuple[str, str | None]:
    """`"offline:bio@dev"` -> `("offline:bio", "dev")`; a source without a part suffix -> `(source, None)`."""
    base, sep, part = source.rpartition("@")
    if sep and part in PARTS and base:
        return base, part
    if sep and base and "/" not in part and "." not in part:
        raise UnlearnError(f"Unknown split {part!r} in {source!r}; use @dev or @test (or no suffix for all).")
    return source, None


def split_dev_test(questions: Iterable[Question]) -> dict[str, list[Question]]:
    """A deterministic dev/test split, stratified by subject: within each subject, questions sorted by the
    SHA-256 of their text go alternately to dev and test (dev gets the extra one of an odd count).

    Depends only on the questions' texts and subjects, not on file order or row numbers, so it is the same
    on every machine; each half keeps the source's order."""
    out: dict[str, list[Question]] = {part: [] for part in PARTS}
    for group in split_by_subject(questions).values():
        keyed = sorted(group, key=lambda q: hashlib.sha256(q.question.strip().encode()).hexdigest())
        for i, q in enumerate(keyed):
            out[PARTS[i % 2]].append(q)
    for part in PARTS:
        out[part].sort(key=lambda q: q.index)
    return out


def split_by_subject(questions: Iterable[Question]) -> dict[str, list[Question]]:
    """Group by subject (WMDP questions, which have none, are grouped under their source)."""
    groups: dict[str, list[Question]] = {}
    for q in questions:
        groups.setdefault(q.subject or q.source, []).append(q)
    return groups


def _offline_question_rows(source: str) -> list[tuple[int, dict]]:
    name, _, subject = source.removeprefix("offline:").partition("/")
    if name not in OFFLINE_QUESTIONS or (subject and name not in MULTI_SUBJECT):
        raise UnlearnError(f"Unknown offline question set {source!r}. Valid forms: {QUESTION_SOURCES_HELP}.")
    path = shipped_dir() / OFFLINE_QUESTIONS[name]
    if not path.is_file():
        raise UnlearnError(
            f"Offline question file {path} is missing; reinstall unlearn (or unset UNLEARN_DATA)."
        )
    rows = list(enumerate(_read_table(path)))
    if subject:
        subjects = sorted({row.get("subject") for _, row in rows if isinstance(row, dict)} - {None})
        if subject not in subjects:
            raise UnlearnError(f"No subject {subject!r} in {source!r}; subjects: {', '.join(subjects)}.")
        rows = [(i, row) for i, row in rows if row.get("subject") == subject]
    return rows


def _to_question(row: Any, source: str, index: int) -> Question:
    """Validate one row; errors name the source and the row (1-based line number for files)."""

    def bad(problem: str) -> UnlearnError:
        return UnlearnError(
            f"{source}: row {index + 1} is invalid: {problem}. Each row needs a non-empty "
            "string 'question', 'choices' (a list of 4 strings) and an integer 'answer' 0-3."
        )

    if not isinstance(row, dict):
        raise bad(f"expected a JSON object, got {type(row).__name__}")
    question, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise bad("'question' is missing or empty")
    if choices is not None and not isinstance(choices, (list, tuple, str)) and hasattr(choices, "tolist"):
        choices = choices.tolist()  # parquet gives numpy arrays
    if not isinstance(choices, (list, tuple)) or len(choices) != 4:
        raise bad(f"'choices' must be a list of 4 strings, got {choices!r}")
    if not all(isinstance(c, str) for c in choices):
        raise bad(f"every choice must be a string, got {choices!r}")
    if isinstance(answer, bool) or not isinstance(answer, numbers.Integral) or not 0 <= int(answer) <= 3:
        raise bad(f"'answer' must be an integer 0-3, got {answer!r}")
    subject = row.get("subject")
    return Question(
        question=question,
        choices=list(choices),
        answer=int(answer),
        subject=subject if isinstance(subject, str) and subject else None,
        source=source,
        index=index,
    )


def _no_split(source: str, split: str | None) -> None:
    if split not in (None, "test"):
        raise UnlearnError(f"{source!r} has a single split; drop split={split!r} (splits apply to hub sets).")


# --------------------------------------------------------------------------- texts


def iter_texts(source: str, *, limit_docs: int | None = None) -> Iterator[str]:
    """Yield the documents of a text source, at most `limit_docs` of them."""
    texts = _texts(source)
    for n, text in enumerate(texts):
        if limit_docs is not None and n >= limit_docs:
            return
        yield text


def _texts(source: str) -> Iterator[str]:
    if source.startswith("offline:"):
        name = source.removeprefix("offline:")
        if name not in OFFLINE_CORPORA:
            raise UnlearnError(f"Unknown offline corpus {source!r}. Valid forms: {TEXT_SOURCES_HELP}.")
        path = shipped_dir() / OFFLINE_CORPORA[name]
        if not path.is_file():
            raise UnlearnError(
                f"Offline corpus {path} is missing; reinstall unlearn, or rebuild it with data/corpora/build_corpora.py."
            )
        return _jsonl_texts(path, source)
    if source == "wikitext":
        rows = _hub_rows("wikitext", "wikitext-2-raw-v1", "test")
        return (row["text"] for _, row in rows if row["text"].strip())
    if source.startswith("wmdp-corpora:") and source.removeprefix("wmdp-corpora:"):
        rows = _hub_rows("cais/wmdp-corpora", source.removeprefix("wmdp-corpora:"), "train")
        return (row["text"] for _, row in rows if row["text"].strip())
    if source == "wmdp-bio-forget":
        raise UnlearnError(
            "The WMDP bio forget corpus (cais/wmdp-bio-forget-corpus) is gated on the HuggingFace hub: request "
            "access there, save it as a .jsonl file with a 'text' field per row and pass that path instead "
            "(or use offline:bio-forget, the shipped stand-in)."
        )
    if source.startswith("questions:"):
        return (_question_text(q) for q in load_questions(source.removeprefix("questions:")))
    if path := _local_path(source, (".jsonl", ".jsonl.gz", ".txt")):
        return _txt_paragraphs(path) if source.endswith(".txt") else _jsonl_texts(path, source)
    raise UnlearnError(f"Unknown text source {source!r}. Valid forms: {TEXT_SOURCES_HELP}.")


def _question_text(q: Question) -> str:
    """Question plus lettered choices, as the forget text for feature selection (Farrell et al. 2024
    select features on WMDP-bio questions); same layout as lm-eval's WMDP prompt without 'Answer:'."""
    return q.question.strip() + "".join(
        f"\n{letter}. {c}" for letter, c in zip("ABCD", q.choices, strict=True)
    )


def _jsonl_texts(path: Path, source: str) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UnlearnError(f"{source}: line {lineno} is not valid JSON ({exc.msg}).") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise UnlearnError(
                    f"{source}: line {lineno} has no string field 'text'; each row must be "
                    '{"text": "..."}.'
                )
            yield row["text"]


def _txt_paragraphs(path: Path) -> Iterator[str]:
    """A plain-text file: one document per paragraph (blocks separated by blank lines)."""
    block: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                block.append(line.rstrip("\n"))
            elif block:
                yield "\n".join(block)
                block = []
    if block:
        yield "\n".join(block)


# --------------------------------------------------------------------------- files and hub


def _local_path(source: str, suffixes: tuple[str, ...]) -> Path | None:
    """The file a source names (`paths.resolve_path`: as given, or `shipped:REL`), or None."""
    if not source.endswith(suffixes):
        return None
    path = resolve_path(source)
    if not path.is_file():
        raise UnlearnError(f"File not found: {source} (also looked for {path}).")
    return path


def _read_table(path: Path) -> list[Any]:
    """Rows of a .jsonl, .json (a list of objects) or .parquet file."""
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict(orient="records")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a UTF-8 BOM (Windows editors) is not part of row 1
    except UnicodeDecodeError as exc:
        raise UnlearnError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8.") from None
    if not text.strip():
        raise UnlearnError(f"{path} is empty: a question file needs at least one row.")
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UnlearnError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}).") from None
        if not isinstance(rows, list):
            raise UnlearnError(f"{path}: a .json question file must hold a list of objects.")
        return rows
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UnlearnError(f"{path}: row {lineno} is not valid JSON ({exc.msg}).") from None
    return rows


def _hub_rows(dataset_id: str, config: str, split: str) -> list[tuple[int, dict]]:
    """`datasets.load_dataset(dataset_id, config, split=split)` with user-fixable failures as UnlearnError."""
    import datasets

    log.info("Loading %s (%s, split %s) from the HuggingFace hub or its cache", dataset_id, config, split)
    try:
        ds = datasets.load_dataset(dataset_id, config, split=split)
    except OSError as exc:  # ConnectionError when offline, FileNotFoundError when not cached
        raise UnlearnError(
            f"Could not load dataset {dataset_id!r} (config {config!r}, split {split!r}): the HuggingFace hub "
            f"could not be reached and no cached copy was found ({type(exc).__name__}: {exc}).\n"
            "Fix: download it once on a machine with network access and run with HF_HUB_OFFLINE=1 to use the "
            "cached copy; or pass a local .jsonl/.parquet path in the same schema; or use the shipped offline "
            "sets (offline:bio and offline:retain for questions, offline:bio-forget and offline:retain for text)."
        ) from exc
    except ValueError as exc:  # unknown config or split
        raise UnlearnError(
            f"Dataset {dataset_id!r} has no config {config!r} / split {split!r}: {exc}"
        ) from exc
    return list(enumerate(ds))
