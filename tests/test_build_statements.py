"""data/corpora/build_statements.py: shipped statement corpora are current, split as documented, and
bad statement files are refused with their file and line."""

from __future__ import annotations

import gzip
import importlib
import json
import shutil
from pathlib import Path

import pytest

from unlearn.data import iter_texts

SCRIPTS = Path(__file__).resolve().parents[1] / "data" / "corpora"
STATEMENTS = SCRIPTS / "statements"
CORPORA = Path(__file__).resolve().parents[1] / "unlearn" / "shipped" / "corpora"


@pytest.fixture
def bs(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # the script imports its sibling build_corpora
    return importlib.import_module("build_statements")


def _naive_groups(path: Path) -> dict[str, list[str]]:
    """Subtopic -> sentences, parsed independently of the script (no validation)."""
    groups: dict[str, list[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            current = "-".join("".join(c if c.isalnum() else " " for c in line[1:].lower()).split())
            groups[current] = []
        elif line.strip():
            groups[current].append(line)
    return groups


def _rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_shipped_files_are_a_fresh_build(bs, tmp_path):
    bs.build(STATEMENTS, tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(p.name for p in CORPORA.glob("*-statements*.jsonl.gz"))
    for name in names:  # byte-identical: deterministic gzip and nobody forgot to rebuild
        assert (tmp_path / name).read_bytes() == (CORPORA / name).read_bytes(), name


@pytest.mark.parametrize("topic", ["bio", "retain"])
def test_documents_match_brute_force_split(topic):
    groups = _naive_groups(STATEMENTS / f"{topic}.txt")
    assert len(groups) >= 10 and sum(map(len, groups.values())) >= 1000
    expected = {"train": [], "heldout": []}
    for sub, sentences in groups.items():
        chunks = [sentences[i : i + 4] for i in range(0, len(sentences), 4)]
        for i, chunk in enumerate(chunks):
            split = "heldout" if i % 10 == 9 else "train"
            expected[split].append({"text": " ".join(chunk), "source": f"statements:{topic}/{sub}"})
    assert _rows(CORPORA / f"{topic}-statements.jsonl.gz") == expected["train"]
    assert _rows(CORPORA / f"{topic}-statements-heldout.jsonl.gz") == expected["heldout"]
    assert expected["heldout"]  # every subtopic has >= 10 documents somewhere
    # The library reads them as local text sources.
    assert list(iter_texts(str(CORPORA / f"{topic}-statements-heldout.jsonl.gz"))) == [
        d["text"] for d in expected["heldout"]
    ]


def test_no_sentence_repeats_across_files():
    seen: dict[str, str] = {}
    for path in sorted(STATEMENTS.glob("*.txt")):
        for sentences in _naive_groups(path).values():
            for s in sentences:
                key = " ".join(s.lower().split())
                assert key not in seen, (s, seen.get(key), path.name)
                seen[key] = path.name


def _write(d: Path, **files: str) -> Path:
    d.mkdir(exist_ok=True)
    for topic, text in files.items():
        (d / f"{topic}.txt").write_text(text, encoding="utf-8")
    return d


def test_chem_is_packaged_when_present_and_output_is_deterministic(bs, tmp_path):
    src = _write(
        tmp_path / "s",
        bio="# cells\n" + "".join(f"Cell fact {i}.\n" for i in range(45)),
        retain="\n# rivers\nThe Nile is long.\n\n# lakes\nLakes are still.\n\n",  # blank lines between groups
        chem="# acids\nAcids taste sour.\nBases feel slippery.\n",
    )
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    out1.mkdir(), out2.mkdir()
    corpora = bs.build(src, out1)
    bs.build(src, out2)
    assert sorted(p.name for p in out1.iterdir()) == sorted(
        f"{t}-statements{s}.jsonl.gz" for t in ("bio", "retain", "chem") for s in ("", "-heldout")
    )
    for p in out1.iterdir():
        assert p.read_bytes() == (out2 / p.name).read_bytes()
        assert p.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime field
    # 45 sentences -> 12 documents (11 of 4, one of 1); document 9 is held out.
    assert len(corpora["bio-statements"].docs) == 11 and corpora["bio-statements"].n_sentences == 41
    assert _rows(out1 / "bio-statements-heldout.jsonl.gz") == [
        {"text": " ".join(f"Cell fact {i}." for i in range(36, 40)), "source": "statements:bio/cells"}
    ]
    assert [r["source"] for r in _rows(out1 / "retain-statements.jsonl.gz")] == [
        "statements:retain/rivers",
        "statements:retain/lakes",
    ]
    assert _rows(out1 / "chem-statements.jsonl.gz") == [
        {"text": "Acids taste sour. Bases feel slippery.", "source": "statements:chem/acids"}
    ]
    shutil.rmtree(out2)
    (src / "chem.txt").unlink()
    out2.mkdir()
    bs.build(src, out2)  # chem is optional
    assert not list(out2.glob("chem-*"))


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"bio": "# a\nOne.\n\nTwo.\n"}, r"bio.txt:3: empty line inside subtopic 'a'"),
        ({"bio": "One.\n"}, r"bio.txt:1: sentence before the first `# subtopic` header"),
        ({"bio": "# a\nOne.\n# a\nTwo.\n"}, r"bio.txt:3: subtopic 'a' appears twice"),
        ({"bio": "# a\nno full stop\n"}, r"bio.txt:2: 'no full stop' does not end a sentence"),
        ({"bio": "# a\nOne. \n"}, r"bio.txt:2: leading or trailing whitespace"),
        (
            {"bio": "# a\nSame  thing.\n", "retain": "# b\nOther.\nsame thing.\n"},
            r"retain.txt:3: duplicate of .*bio.txt:2",
        ),
        ({"retain": "# b\nOther.\n"}, r"bio.txt is missing"),
    ],
)
def test_bad_statement_files_name_file_and_line(bs, tmp_path, files, message):
    files = {"retain": "# r\nRetain fact.\n", **files}
    src = _write(tmp_path / "s", **files)
    if "bio" not in files:
        (src / "bio.txt").unlink(missing_ok=True)
    with pytest.raises(bs.StatementError, match=message):
        bs.build(src, tmp_path)
