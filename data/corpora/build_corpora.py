"""Build the offline text corpora: a biology *forget* corpus and a general *retain* corpus.

The unlearning pipeline needs forget text (to select SAE features, to drive RMU's forget loss) and
retain text (WikiText's role in Farrell et al. 2024 and the WMDP paper's RMU). The hub is unreachable
here, so this script turns permissively licensed Debian text into model-readable English once and the
repo ships only the compressed result:

* WordNet 3.0 (`apt-get install wordnet-base`, files under /usr/share/wordnet): every synset has a
  lexicographer file (see `man 5 lexnames`). Synsets about animals, plants, body parts, natural
  processes and bodily verbs are the forget corpus; clearly non-biological categories (acts,
  artifacts, communication, locations, time, ...) are the retain corpus. Each synset becomes a sentence
  ("A heart, also called pump or ticker, is ..."), and neighbouring synsets (the data files keep a
  lexicographer file's synsets in source order) are grouped into documents of ~100-300 words.
* Python 3 documentation (`apt-get install python3-doc`, PSF licence): paragraphs of the tutorial,
  how-tos, FAQ and library reference, a retain supplement with a different register.

Every 20th document of each source goes to the held-out files (~5%) for SAE evaluation. Output is
deterministic: gzip with mtime 0, documents in file order.

    apt-get install -y wordnet-base python3-doc
    python data/corpora/build_corpora.py
"""

from __future__ import annotations

import argparse
import gzip
import html.parser
import json
import re
from collections.abc import Iterator
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
PYDOC_DIR = Path("/usr/share/doc/python3/html")

# Lexicographer file numbers, from lexnames(5WN) of WordNet 3.0.
FORGET_LEXFILES = {5: "noun.animal", 8: "noun.body", 20: "noun.plant", 22: "noun.process", 29: "verb.body"}
RETAIN_LEXFILES = {
    4: "noun.act",
    6: "noun.artifact",
    9: "noun.cognition",
    10: "noun.communication",
    15: "noun.location",
    21: "noun.possession",
    23: "noun.quantity",
    24: "noun.relation",
    25: "noun.shape",
    28: "noun.time",
    31: "verb.cognition",
    32: "verb.communication",
    33: "verb.competition",
    36: "verb.creation",
    38: "verb.motion",
    40: "verb.possession",
    41: "verb.social",
}
# Retain synsets whose gloss mentions biology are dropped so the retain corpus stays off-topic
# (noun.artifact holds drugs and lab equipment, noun.act holds surgery and medical care, ...).
BIO_WORDS = re.compile(
    r"\b(animals?|plants?|cells?|genes?|genetic\w*|organisms?|species|genus|bacteri\w*|vir(us|uses|al)|"
    r"diseases?|infect\w*|blood|muscles?|tissues?|organs?|proteins?|enzymes?|hormones?|medic\w*|"
    r"drugs?|surg\w*|body|bodily|bones?|nerves?|brain|anatom\w*|biolog\w*|physiolog\w*|patients?|"
    r"insects?|birds?|fish|mammals?|reptiles?|flowers?|leaves|seeds?|fruit|toxi\w*|poison\w*|"
    r"vaccin\w*|therap\w*|pregnan\w*|birth)\b",
    re.IGNORECASE,
)
PYDOC_SECTIONS = ("tutorial", "howto", "faq", "library", "reference")
DOC_MIN_WORDS, DOC_MAX_WORDS = 100, 300
HELDOUT_EVERY = 20


# --------------------------------------------------------------------------- WordNet


def _clean_lemma(word: str) -> str:
    """`long(a)` → `long`, `heart_attack` → `heart attack`."""
    return re.sub(r"\([a-z]+\)$", "", word).replace("_", " ")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _split_gloss(gloss: str) -> tuple[str, list[str]]:
    """`def; "ex one"; "ex two"` → (`def`, [`ex one`, `ex two`])."""
    examples = re.findall(r'"([^"]+)"', gloss)
    definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
    return definition, [e.strip() for e in examples if e.strip()]


# Definitions that do not start with a noun phrase ("of northern Africa", "used for ...") read as
# "X is a <hypernym> of northern Africa" instead of "X is an of northern Africa".
_DETERMINERS = {"a", "an", "any", "one", "the", "some", "someone", "something", "anything", "either"}
_CONTINUATIONS = {
    "of",
    "in",
    "on",
    "from",
    "for",
    "with",
    "by",
    "at",
    "to",
    "as",
    "that",
    "which",
    "used",
    "having",
    "found",
    "native",
    "resembling",
    "related",
    "similar",
    "especially",
    "usually",
    "often",
    "sometimes",
    "formerly",
    "chiefly",
    "mostly",
    "widely",
    "growing",
    "made",
    "able",
    "capable",
    "characterized",
    "consisting",
    "containing",
    "producing",
    "living",
    "occurring",
}


_TAXON_RANKS = {
    "genus",
    "family",
    "order",
    "class",
    "phylum",
    "division",
    "subfamily",
    "suborder",
    "superfamily",
}


def _plural_head(definition: str) -> bool:
    """Whether the definition's leading noun phrase is plural (its last word before a clause ends in -s)."""
    phrase = re.split(r"\b(?:of|in|on|from|for|with|by|at|that|which|who|having|used|;|,|:)\b", definition)[0]
    words = phrase.split()
    if not words:
        return False
    last = words[-1].lower()
    return len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is", "ics", "ous"))


def synset_sentence(pos: str, lemmas: list[str], gloss: str, hypernym: str = "") -> str:
    """One readable sentence (plus examples) for a synset, e.g. 'A heart, also called ticker, is ...'."""
    definition, examples = _split_gloss(gloss)
    if not definition:
        return ""
    head, others = lemmas[0], lemmas[1:4]
    also = f", also called {' or '.join(others)}," if others else ""
    if pos == "n":
        first = definition.split(" ", 1)[0].lower().strip(",;:")
        if first in _CONTINUATIONS and hypernym:
            definition = f"{hypernym} {definition}"
        if head[:1].isupper() or head.split()[0] in _TAXON_RANKS:
            subject = head
        elif first == "the":
            subject = f"The {head}"
        elif first in _DETERMINERS or first in _CONTINUATIONS or not definition.endswith("s"):
            subject = f"{_article(head).capitalize()} {head}"
        else:
            subject = head[:1].upper() + head[1:]
        first = definition.split(" ", 1)[0].lower().strip(",;:")
        rank = next((w.split()[0] for w in others if w.split()[0] in _TAXON_RANKS), "")
        if first in _DETERMINERS:
            text = f"{subject}{also} is {definition}"
        elif _plural_head(definition):  # "ruffs", "New World chameleons", "physical objects consisting of"
            text = (
                f"{subject}{also} is a {rank} of {definition}"
                if rank
                else f"{subject}{also} refers to {definition}"
            )
        else:
            text = f"{subject}{also} is {_article(definition)} {definition}"
    elif pos == "v":
        text = f"To {head}{also} means to {definition.removeprefix('to ')}"
    else:  # adjectives and adverbs are not used for the corpora, kept for completeness
        text = f"{head[:1].upper()}{head[1:]}{also} means {definition}"
    text = text.rstrip(" .;") + "."
    if examples:
        text += " For example: " + "; ".join(f'"{e}"' for e in examples[:2]) + "."
    return text


def iter_synsets(wordnet_dir: Path) -> Iterator[tuple[int, str, str, str]]:
    """(lexfile number, hypernym offset or '', gloss, sentence) for every noun and verb synset in file order."""
    for pos_name, pos in (("noun", "n"), ("verb", "v")):
        path = wordnet_dir / f"data.{pos_name}"
        first_lemma = {}  # offset -> first lemma, to name hypernyms
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.startswith("  "):
                    fields = line.split(" ", 5)
                    first_lemma[fields[0]] = _clean_lemma(fields[4])
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("  "):  # licence header
                    continue
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                lexfile, w_cnt = int(fields[1]), int(fields[3], 16)
                lemmas = [_clean_lemma(fields[4 + 2 * i]) for i in range(w_cnt)]
                rest = fields[4 + 2 * w_cnt :]
                p_cnt = int(rest[0])
                pointers = [rest[1 + 4 * i : 5 + 4 * i] for i in range(p_cnt)]
                hypernym = next((p[1] for p in pointers if p[0] in ("@", "@i")), "")
                sentence = synset_sentence(pos, lemmas, gloss.strip(), first_lemma.get(hypernym, ""))
                if sentence:
                    yield lexfile, hypernym, gloss, sentence


def wordnet_documents(wordnet_dir: Path, lexfiles: dict[int, str], *, drop_bio: bool) -> list[dict]:
    """Group consecutive synsets of one lexicographer file into documents of ~100-300 words.

    A document is closed when it has >= DOC_MIN_WORDS words and the hypernym changes (a topic
    boundary), or when the next sentence would take it past DOC_MAX_WORDS."""
    docs: list[dict] = []
    current: list[str] = []
    words, key = 0, None

    def flush() -> None:
        nonlocal current, words
        if current and words >= 30:
            docs.append({"text": " ".join(current), "source": f"wordnet:{lexfiles[key[0]]}"})
        current, words = [], 0

    for lexfile, hypernym, gloss, sentence in iter_synsets(wordnet_dir):
        if lexfile not in lexfiles or (drop_bio and BIO_WORDS.search(gloss)):
            continue
        n = len(sentence.split())
        if key is not None and (
            lexfile != key[0] or words + n > DOC_MAX_WORDS or (words >= DOC_MIN_WORDS and hypernym != key[1])
        ):
            flush()
        key = (lexfile, hypernym)
        current.append(sentence)
        words += n
    flush()
    return docs


# --------------------------------------------------------------------------- Python documentation


class _ParagraphParser(html.parser.HTMLParser):
    """Collects the text of <p> elements, skipping code blocks (navigation <p>s are too short to keep)."""

    def __init__(self) -> None:
        super().__init__()
        self.paragraphs: list[str] = []
        self._depth_p = 0
        self._skip = 0
        self._buf: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("pre", "script", "style"):  # code and page machinery, not prose
            self._skip += 1
        elif tag == "p" and not self._skip:
            self._depth_p += 1
            self._buf = []

    def handle_endtag(self, tag):
        if tag in ("pre", "script", "style") and self._skip:
            self._skip -= 1
        elif tag == "p" and self._depth_p:
            self._depth_p -= 1
            text = re.sub(r"\s+", " ", "".join(self._buf)).strip().replace("\u00b6", "")
            if text:
                self.paragraphs.append(text)

    def handle_data(self, data):
        if self._depth_p and not self._skip:
            self._buf.append(data)


def pydoc_documents(pydoc_dir: Path, max_words: int) -> list[dict]:
    """Prose paragraphs of the Python docs joined into ~100-300-word documents, page by page."""
    docs: list[dict] = []
    total = 0
    pages = sorted(p for s in PYDOC_SECTIONS for p in (pydoc_dir / s).rglob("*.html"))
    for page in pages:
        parser = _ParagraphParser()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        # Keep sentences of prose: skip short fragments (headers, signatures, "New in version ...").
        paragraphs = [p for p in parser.paragraphs if len(p.split()) >= 12 and p[-1:] in ".:)"]
        current, words = [], 0
        for para in paragraphs:
            n = len(para.split())
            if current and words + n > DOC_MAX_WORDS:
                docs.append(
                    {"text": "\n".join(current), "source": f"python-docs:{page.relative_to(pydoc_dir)}"}
                )
                total += words
                current, words = [], 0
            if n <= DOC_MAX_WORDS:
                current.append(para)
                words += n
        if current and words >= 30:
            docs.append({"text": "\n".join(current), "source": f"python-docs:{page.relative_to(pydoc_dir)}"})
            total += words
        if total >= max_words:
            break
    return docs


# --------------------------------------------------------------------------- output


def split_heldout(docs: list[dict]) -> tuple[list[dict], list[dict]]:
    """Every HELDOUT_EVERY-th document (counted per source file order) is held out."""
    train = [d for i, d in enumerate(docs) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    heldout = [d for i, d in enumerate(docs) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    return train, heldout


def write_jsonl_gz(path: Path, docs: list[dict]) -> None:
    """Deterministic gzip (mtime 0, no file name) so rebuilding gives identical bytes."""
    payload = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f,
    ):
        f.write(payload)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wordnet-dir", type=Path, default=WORDNET_DIR)
    parser.add_argument("--pydoc-dir", type=Path, default=PYDOC_DIR)
    parser.add_argument(
        "--pydoc-words", type=int, default=120_000, help="words of Python docs to add to retain"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "unlearn" / "shipped" / "corpora",
    )
    args = parser.parse_args()

    forget = wordnet_documents(args.wordnet_dir, FORGET_LEXFILES, drop_bio=False)
    retain_wn = wordnet_documents(args.wordnet_dir, RETAIN_LEXFILES, drop_bio=True)
    retain_py = pydoc_documents(args.pydoc_dir, args.pydoc_words) if args.pydoc_dir.exists() else []
    outputs = {}
    outputs["bio-forget"], outputs["bio-forget-heldout"] = split_heldout(forget)
    wn_train, wn_held = split_heldout(retain_wn)
    py_train, py_held = split_heldout(retain_py)
    outputs["retain"], outputs["retain-heldout"] = wn_train + py_train, wn_held + py_held
    for name, docs in outputs.items():
        path = args.out_dir / f"{name}.jsonl.gz"
        write_jsonl_gz(path, docs)
        n_words = sum(len(d["text"].split()) for d in docs)
        print(f"{path.name}: {len(docs)} documents, {n_words} words, {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
