"""The embedder's own tokenizer and network, built from an `EmbedderConfig`, plus the
smooth-inverse-frequency weighting a trained static model gets before it is saved.

`arch: static` is a bag of trained token embeddings (sentence-transformers' `StaticEmbedding`,
mean of token vectors, L2-normalised) over a character-level tokenizer; `arch: bert` is a small
BERT-style encoder with mean pooling.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

UNK, PAD = "[UNK]", "[PAD]"


def char_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """A `tokenizers.Tokenizer` with one token per character (NFKC, lower-cased, no spaces):
    the `vocab_size - 2` most frequent characters seen at least `min_frequency` times."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(normalizer.normalize_str(text))
    vocab = {UNK: 0, PAD: 1}
    for ch, count in counts.most_common():
        if len(vocab) >= vocab_size or count < min_frequency:
            break
        if not ch.isspace():
            vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")]
    )
    return tok


def build_tokenizer(texts: list[str], cfg):
    """The embedder's own tokenizer as an HF fast tokenizer (`cfg.tokenizer`: char or bpe)."""
    if cfg.tokenizer == "char":
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(
            tokenizer_object=char_tokenizer(texts, cfg.vocab_size),
            unk_token=UNK,
            pad_token=PAD,
            model_max_length=cfg.max_seq_length,
        )
    from training.tokenizer import train_tokenizer

    return train_tokenizer(
        texts, vocab_size=cfg.vocab_size, min_frequency=2, model_max_length=cfg.max_seq_length
    )


def build_model(tokenizer, cfg, work: Path):
    """A randomly initialised embedder for `cfg.arch`, ending in L2 normalisation.

    static: StaticEmbedding (mean of trained token vectors, `hidden_size` wide).
    bert: BERT-style encoder wrapped as Transformer + mean Pooling (its weights pass through
    `work`, which sentence-transformers loads them from).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Normalize,
        Pooling,
        StaticEmbedding,
        Transformer,
    )

    if cfg.arch == "static":
        static = StaticEmbedding(tokenizer, embedding_dim=cfg.hidden_size)
        torch.nn.init.normal_(static.embedding.weight, std=cfg.hidden_size**-0.5)
        return SentenceTransformer(modules=[static, Normalize()], device="cpu")

    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=4 * cfg.hidden_size,
        max_position_embeddings=cfg.max_seq_length,
        pad_token_id=tokenizer.pad_token_id,
        type_vocab_size=1,
    )
    BertModel(config).save_pretrained(str(work))
    tokenizer.save_pretrained(str(work))
    encoder = Transformer(str(work), max_seq_length=cfg.max_seq_length)
    pooling = Pooling(encoder.get_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[encoder, pooling, Normalize()], device="cpu")


def pretokenise(model, pairs) -> list[list]:
    """(anchor id arrays, positive id arrays) of `pairs` for a StaticEmbedding model."""
    import numpy as np

    tokenizer = model[0].tokenizer
    sides = []
    for side in (0, 1):
        encodings = tokenizer.encode_batch([p[side] for p in pairs], add_special_tokens=False)
        sides.append([np.asarray(e.ids, dtype=np.int64) for e in encodings])
    return sides


@torch.no_grad()
def apply_sif_weights(model, token_ids: list, a: float) -> torch.Tensor:
    """Scale every token vector of a StaticEmbedding model by a / (a + p(token)), p = the
    token's share of all ids in `token_ids` (one id array per training text).

    Smooth inverse frequency (Arora, Liang and Ma, ICLR 2017): a mean of token vectors is
    dominated by frequent tokens (的, 之, 曰 …) that say little about a text; weighting them
    down makes the mean lean on the rare, telling ones. Training with in-batch negatives only
    partly learns this through vector norms; on the dev queries of `bench.fusion_dev`
    the weighting lifts dense MRR@10 on both query kinds. Returns the weights applied.
    """
    import numpy as np

    table = model[0].embedding.weight
    counts = np.bincount(np.concatenate(token_ids), minlength=table.shape[0])[: table.shape[0]]
    shares = torch.from_numpy(counts / max(1, counts.sum()))
    weights = (a / (a + shares)).to(table.dtype)
    table.mul_(weights.unsqueeze(1))
    return weights
