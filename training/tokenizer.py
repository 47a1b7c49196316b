"""Stage 1: train a byte-level BPE tokenizer on Chinese text and save it as an HF tokenizer.

Training reads text from a streaming iterator, so memory is bounded by the number of
distinct pre-tokens, not by the corpus size.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from training.chat_format import BOS, CHAT_TEMPLATE, EOS, IM_END, IM_START, PAD, SPECIAL_TOKENS, UNK

# Pre-tokenizer split: runs of letters (a run of Han characters is one piece, like Qwen2's
# pattern), single digits, punctuation runs, whitespace. Merges never cross these pieces.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)
# Byte-level needs 256 base symbols plus our special tokens before any merge is possible.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS) + 1


def check_vocab_size(vocab_size: int) -> None:
    """Refuse a vocabulary too small for byte-level BPE (the recipe checks with this too)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"tokenizer.vocab_size={vocab_size} is too small: byte-level BPE needs 256 byte symbols "
            f"plus {len(SPECIAL_TOKENS)} special tokens; set --tokenizer.vocab_size to at least "
            f"{MIN_VOCAB_SIZE} (4096 or more is sensible for Chinese)."
        )


def build_bpe_trainer_and_model(
    vocab_size: int, min_frequency: int
) -> tuple[Tokenizer, trainers.BpeTrainer]:
    """An empty byte-level BPE tokenizer and its trainer, with our special tokens first (ids 0..5)."""
    check_vocab_size(vocab_size)
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def wrap_as_hf(tok: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """Wrap a `tokenizers.Tokenizer` with our special tokens and chat template."""
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=[IM_START, IM_END],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    model_max_length: int = 2048,
) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on `texts` (consumed once, streaming) and return an HF tokenizer."""
    tok, trainer = build_bpe_trainer_and_model(vocab_size, min_frequency)
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_as_hf(tok, model_max_length)


def chars_per_token(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str]) -> float:
    """Characters per token over `texts` (higher = more compact), special tokens excluded."""
    chars = tokens = 0
    for text in texts:
        chars += len(text)
        tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return chars / max(tokens, 1)


def capped_texts(texts: Iterable[str], max_chars: int | None) -> Iterator[str]:
    """Yield texts until `max_chars` characters have been yielded (None = no cap)."""
    seen = 0
    for text in texts:
        if max_chars is not None and seen >= max_chars:
            return
        seen += len(text)
        yield text


def rendered_conversations(paths) -> Iterator[str]:
    """Each SFT conversation of `paths` as the chat template renders it (tools, calls and
    results included), the special-token strings taken out: they are tokens of their own, and
    BPE would spend merges on their characters."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from training.data.formats import iter_sft_conversations

    specials = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
    for row in iter_sft_conversations(paths):
        (text,), _ = render_jinja_template(
            [row["messages"]],
            tools=row["tools"] or None,
            documents=row["documents"] or None,
            chat_template=CHAT_TEMPLATE,
        )
        yield specials.sub("\n", text)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(str(path))


def main(recipe, run_dir: Path, work: Path) -> dict:
    """Train the tokenizer for `recipe` into `work` (published as `run_dir/tokenizer`); return
    its report."""
    from training.data.formats import iter_texts

    cfg = recipe.tokenizer
    start = time.time()
    texts = capped_texts(iter_texts(recipe.data.pretrain), cfg.max_chars)
    if cfg.chat_files:
        chats = capped_texts(rendered_conversations(cfg.chat_files), cfg.chat_max_chars)
        texts = itertools.chain(texts, chats)
    tokenizer = train_tokenizer(
        texts,
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        model_max_length=recipe.model.max_position_embeddings,
    )
    wall = time.time() - start
    tokenizer.save_pretrained(str(work))
    eval_texts = list(capped_texts(iter_texts([recipe.data.pretrain_eval]), 200_000))
    return {
        "stage": "tokenizer",
        "vocab_size": len(tokenizer),
        "chars_per_token_heldout": round(chars_per_token(tokenizer, eval_texts), 4),
        "heldout_chars": sum(len(t) for t in eval_texts),
        "wall_time_s": round(wall, 2),
    }
