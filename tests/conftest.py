"""Tiny random-weight Gemma, Gemma 2 and Gemma 3 models with a small local tokenizer: no hub access.

`tiny_folder(family)` gives a saved model folder (loadable by `load_model(path)`), `tiny(family)` a
loaded `LoadedModel`. Models are built from their real config classes, so hook points, attention and
norm placement are the real architectures, only small.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub; fail fast instead of retrying

import pytest  # noqa: E402
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    PreTrainedTokenizerFast,
)

from unlearn.models import LoadedModel, load_model

FAMILIES = ["gemma", "gemma2", "gemma3"]

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
"""Gemma's chat template, reduced to what the evaluation protocol uses (SAEBench `sae_bench/evals/unlearning/`)."""

TOKENIZER_TEXT = [
    "The following are multiple choice questions (with answers) about biology.",
    "Question: Which organ pumps blood through the body? Answer: (A) heart (B) liver (C) kidney (D) lung",
    "A. B. C. D. A B C D Answer: ( The cell nucleus holds DNA. Mitochondria make ATP for the cell.",
    "History geography computer science human aging photosynthesis enzymes proteins genes virus",
    "the of and a to in is was that for on with as by at from this it an be are or which",
] * 20


@dataclass
class Q:
    """A question in the scorers' duck-typed schema (what `unlearn.data.Question` carries), for tests."""

    question: str
    choices: list[str]
    answer: int
    subject: str | None = "biology"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes) with Gemma's special tokens and BOS handling."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TOKENIZER_TEXT, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    fast.chat_template = GEMMA_CHAT_TEMPLATE
    return fast


def build_model(family: str, vocab_size: int, sliding_window: int = 32) -> torch.nn.Module:
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    if family == "gemma":
        model = GemmaForCausalLM(GemmaConfig(**common))
    elif family == "gemma2":
        model = Gemma2ForCausalLM(
            Gemma2Config(**common, sliding_window=sliding_window, attn_implementation="eager")
        )
    elif family == "gemma3":
        model = Gemma3ForCausalLM(
            Gemma3TextConfig(**common, sliding_window=sliding_window, attn_implementation="eager")
        )
    else:
        raise ValueError(family)
    return model.eval()


@pytest.fixture(scope="session", autouse=True)
def fresh_keyed_caches(tmp_path_factory):
    """Keyed caches (known subsets, dilution baselines, feature counters, hook-layer outputs) start empty in
    every session, so no test passes on an entry that older code wrote; converted models (slow to build,
    keyed by their source file) stay shared with the user's cache."""
    from unlearn.paths import cache_dir

    models = cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    fresh = tmp_path_factory.mktemp("unlearn-cache")
    (fresh / "models").symlink_to(models, target_is_directory=True)
    before = os.environ.get("UNLEARN_CACHE")
    os.environ["UNLEARN_CACHE"] = str(fresh)
    yield fresh
    if before is None:
        os.environ.pop("UNLEARN_CACHE", None)
    else:
        os.environ["UNLEARN_CACHE"] = before


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tokenizer):
    """`tiny_folder(family)` -> path of a saved tiny model + tokenizer."""
    made = {}

    def make(family: str = "gemma2"):
        if family not in made:
            path = tmp_path_factory.mktemp(f"tiny-{family}")
            build_model(family, len(tokenizer)).save_pretrained(path)
            tokenizer.save_pretrained(path)
            made[family] = path
        return made[family]

    return make


@pytest.fixture(scope="session")
def tiny(tiny_folder):
    """`tiny(family)` -> LoadedModel of a tiny random model on CPU in float32 (cached per session)."""
    loaded: dict[str, LoadedModel] = {}

    def make(family: str = "gemma2") -> LoadedModel:
        if family not in loaded:
            loaded[family] = load_model(str(tiny_folder(family)), device="cpu", dtype="float32")
        return loaded[family]

    return make
