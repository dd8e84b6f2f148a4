"""Build the offline multiple-choice question sets from the text files under `src/`.

The questions were written for this project by the `unlearn` developers (CC0); none is copied from
a benchmark. They stand in for WMDP-bio (forget topic), the MMLU side-effect subjects and MMLU college
biology when the HuggingFace hub cannot be reached (Farrell, Lau, Conmy 2024, arXiv 2410.19278).

Layout: `src/<set>/<subject>.txt` -> `<set>.jsonl`, one jsonl per set folder, built in sorted order.
Each line of a text file is `question | correct answer | wrong | wrong | wrong`; blank lines and lines
starting with `#` are ignored. The subject is "biology" for `bio`, "chemistry" for `chem` and the file
stem otherwise (`retain/geography.txt` -> "geography").

Why they look the way they do: the embedded model is a 270M *base* model whose knowledge shows under
answer-text (cloze) scoring, so each correct answer is a short, common phrase that completes the
question, and the distractors have the same form, length and commonness, so the answer prior alone
cannot pick the right one. Checks: 5 non-empty fields, 4 distinct choices, no question text repeated
across all sets (errors name file and line). Per set, the correct index is balanced exactly over 0..3
after a seeded shuffle; each set has its own seed (derived from SEED and the set name), so adding a
set leaves the others byte-identical.

    python data/questions/make_questions.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20241025
SET_SUBJECT = {"bio": "biology", "chem": "chemistry"}  # other sets: subject = file stem

Item = tuple[str, list[str], str, str]  # question, [correct, wrong, wrong, wrong], subject, "file:line"


def parse_file(path: Path, subject: str) -> list[Item]:
    """Lines `q|correct|wrong|wrong|wrong` -> items; malformed lines raise with file and line."""
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{lineno}"
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 5 or not all(parts):
            raise ValueError(
                f"{where}: expected 5 non-empty fields 'question|correct|wrong|wrong|wrong': {line!r}"
            )
        if len({p.lower() for p in parts[1:]}) != 4:
            raise ValueError(f"{where}: the 4 choices are not distinct: {line!r}")
        items.append((parts[0], parts[1:], subject, where))
    return items


def parse_set(folder: Path) -> list[Item]:
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise ValueError(f"{folder}: no .txt question files")
    return [item for f in files for item in parse_file(f, SET_SUBJECT.get(folder.name, f.stem))]


def check_unique(items: list[Item]) -> None:
    """No question text (case-insensitive) may appear twice, within or across sets."""
    first: dict[str, str] = {}
    for question, _, _, where in items:
        key = " ".join(question.lower().split())
        if key in first:
            raise ValueError(f"{where}: duplicate question (first at {first[key]}): {question!r}")
        first[key] = where


def to_rows(items: list[Item], rng: random.Random) -> list[dict]:
    """Shuffle question order, put the correct answer at index i % 4, shuffle the distractors."""
    order = list(range(len(items)))
    rng.shuffle(order)
    answer_of = {idx: pos % 4 for pos, idx in enumerate(order)}  # exact balance over 0..3
    rows = []
    for idx, (question, (correct, *wrong), subject, _) in enumerate(items):
        rng.shuffle(wrong)
        answer = answer_of[idx]
        choices = wrong[:answer] + [correct] + wrong[answer:]
        rows.append({"question": question, "choices": choices, "answer": answer, "subject": subject})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build(src: Path) -> dict[str, list[dict]]:
    """Rows of every set under `src` (one folder per set), keyed by set name, in sorted order."""
    sets = {folder.name: parse_set(folder) for folder in sorted(src.iterdir()) if folder.is_dir()}
    check_unique([item for items in sets.values() for item in items])
    return {name: interleave(to_rows(items, random.Random(f"{SEED}:{name}"))) for name, items in sets.items()}


def interleave(rows: list[dict]) -> list[dict]:
    """Subjects round-robin (each keeping its order), so that the first N rows of a multi-subject set,
    which `--limit N` takes, cover every subject evenly."""
    by_subject: dict[str, list[dict]] = {}
    for row in rows:
        by_subject.setdefault(row["subject"], []).append(row)
    queues = list(by_subject.values())
    out = []
    for i in range(max(map(len, queues))):
        out += [q[i] for q in queues if i < len(q)]
    return out


def main() -> None:
    here = Path(__file__).resolve().parent
    out_dir = here.parents[1] / "unlearn" / "shipped" / "questions"  # shipped inside the package
    for name, rows in build(here / "src").items():
        write_jsonl(out_dir / f"{name}.jsonl", rows)
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["subject"]] = counts.get(row["subject"], 0) + 1
        print(f"{name}.jsonl: {len(rows)} questions {counts}")


if __name__ == "__main__":
    main()
