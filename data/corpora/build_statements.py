"""Package the hand-written statement lists into forget/retain corpora written in one register.

Feature selection compares SAE feature firing on forget text with firing on retain text. When the two
sides differ in style (WordNet glosses of organisms vs other glosses and Python docs), the top features
detect the style ("genus", Latin taxon endings) instead of the topic. The statement files hold short
plain textbook facts, one sentence a line, on both sides ("The heart pumps blood through the body." /
"The Nile is the longest river in Africa."), so what differs between them is the topic.

Input: statements/<topic>.txt for topic in bio, retain, chem (chem only when the file exists), one
sentence a line, grouped under `# subtopic` header lines; no empty lines inside a group. Output, per topic:
<topic>-statements.jsonl.gz and <topic>-statements-heldout.jsonl.gz with rows
{"text": str, "source": "statements:<topic>/<subtopic>"}. A document is SENTENCES_PER_DOC consecutive
sentences of one subtopic (the last one of a subtopic may be shorter); document i of each subtopic is
held out when i % HELDOUT_EVERY == HELDOUT_EVERY - 1. Deterministic (gzip mtime 0).

    python data/corpora/build_statements.py
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import NamedTuple

from build_corpora import write_jsonl_gz

TOPICS = ("bio", "retain", "chem")
OPTIONAL_TOPICS = {"chem"}  # written separately; packaged when present
SENTENCES_PER_DOC = 4
HELDOUT_EVERY = 10


class Statement(NamedTuple):
    text: str
    subtopic: str
    path: Path
    lineno: int


class StatementError(ValueError):
    """A malformed statement file; the message names the file and line."""


def _slug(header: str) -> str:
    """`# Genetics and heredity` -> `genetics-and-heredity` (the `source` suffix)."""
    return re.sub(r"[^a-z0-9]+", "-", header.lower()).strip("-")


def read_statements(path: Path) -> list[Statement]:
    """Sentences of one file in file order, each tagged with its subtopic, file and line."""
    statements: list[Statement] = []
    subtopic, seen_subtopics = "", set()
    lines = path.read_text(encoding="utf-8").splitlines()
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        where = f"{path}:{lineno}"
        if not line:
            # Blank lines may separate groups (before a header or at the end), never split a group.
            following = next((rest.strip() for rest in lines[lineno:] if rest.strip()), "#")
            if following.startswith("#"):
                continue
            raise StatementError(
                f"{where}: empty line inside subtopic {subtopic or '(none)'!r}; remove it "
                "(blank lines may only come before a `# subtopic` header)."
            )
        if line.startswith("#"):
            subtopic = _slug(line.lstrip("#"))
            if not subtopic:
                raise StatementError(f"{where}: empty subtopic header; write `# <subtopic name>`.")
            if subtopic in seen_subtopics:
                raise StatementError(f"{where}: subtopic {subtopic!r} appears twice; merge the two groups.")
            seen_subtopics.add(subtopic)
            continue
        if not subtopic:
            raise StatementError(f"{where}: sentence before the first `# subtopic` header; add one above it.")
        if line != raw:
            raise StatementError(f"{where}: leading or trailing whitespace; strip it.")
        if line[-1] not in ".!?":
            raise StatementError(f"{where}: {line!r} does not end a sentence; end it with a full stop.")
        statements.append(Statement(line, subtopic, path, lineno))
    return statements


def check_unique(statements: list[Statement]) -> None:
    """No sentence may appear twice (case and spacing ignored), within or across files."""
    first: dict[str, Statement] = {}
    for s in statements:
        key = " ".join(s.text.casefold().split())
        if key in first:
            f = first[key]
            raise StatementError(
                f"{s.path}:{s.lineno}: duplicate of {f.path}:{f.lineno} ({s.text!r}); drop one."
            )
        first[key] = s


class Corpus(NamedTuple):
    docs: list[dict]
    n_sentences: int


def documents(topic: str, statements: list[Statement]) -> tuple[Corpus, Corpus]:
    """(train, heldout) documents of SENTENCES_PER_DOC consecutive sentences of one subtopic."""
    train: list[dict] = []
    heldout: list[dict] = []
    n_train = n_heldout = 0
    by_subtopic: dict[str, list[str]] = {}
    for s in statements:
        by_subtopic.setdefault(s.subtopic, []).append(s.text)
    for subtopic, sentences in by_subtopic.items():
        for i, start in enumerate(range(0, len(sentences), SENTENCES_PER_DOC)):
            chunk = sentences[start : start + SENTENCES_PER_DOC]
            doc = {"text": " ".join(chunk), "source": f"statements:{topic}/{subtopic}"}
            if i % HELDOUT_EVERY == HELDOUT_EVERY - 1:
                heldout.append(doc)
                n_heldout += len(chunk)
            else:
                train.append(doc)
                n_train += len(chunk)
    return Corpus(train, n_train), Corpus(heldout, n_heldout)


def build(statements_dir: Path, out_dir: Path) -> dict[str, Corpus]:
    """Read every present topic file, validate all of them together, write the corpora; returns them."""
    per_topic: dict[str, list[Statement]] = {}
    for topic in TOPICS:
        path = statements_dir / f"{topic}.txt"
        if not path.is_file():
            if topic in OPTIONAL_TOPICS:
                continue
            raise StatementError(
                f"{path} is missing; write it (one sentence a line under `# subtopic` headers)."
            )
        per_topic[topic] = read_statements(path)
    check_unique([s for ss in per_topic.values() for s in ss])
    outputs: dict[str, Corpus] = {}
    for topic, statements in per_topic.items():
        outputs[f"{topic}-statements"], outputs[f"{topic}-statements-heldout"] = documents(topic, statements)
    for name, corpus in outputs.items():
        write_jsonl_gz(out_dir / f"{name}.jsonl.gz", corpus.docs)
    return outputs


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--statements-dir", type=Path, default=here / "statements")
    parser.add_argument("--out-dir", type=Path, default=here.parents[1] / "unlearn" / "shipped" / "corpora")
    args = parser.parse_args()
    try:
        outputs = build(args.statements_dir, args.out_dir)
    except StatementError as exc:
        sys.exit(f"error: {exc}")
    for name, (docs, n_sentences) in outputs.items():
        n_words = sum(len(d["text"].split()) for d in docs)
        print(f"{name}.jsonl.gz: {len(docs)} documents, {n_sentences} sentences, {n_words} words")


if __name__ == "__main__":
    main()
