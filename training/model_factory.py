"""Build a fresh causal LM (phi / llama / qwen2) from a recipe's model section and a tokenizer."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from training.chat_format import EOS, IM_END
from training.config import ModelArch, ModelConfig

# One (config, model) class pair per `model.arch` choice.
_CLASSES: dict[ModelArch, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "phi": (PhiConfig, PhiForCausalLM),
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}


def padded_vocab_size(tokenizer_len: int, multiple: int) -> int:
    return int(math.ceil(tokenizer_len / multiple) * multiple)


def build_model_config(cfg: ModelConfig, tokenizer, min_vocab_size: int = 0) -> PretrainedConfig:
    config_cls, _ = _CLASSES[cfg.arch]
    common = dict(
        vocab_size=padded_vocab_size(max(len(tokenizer), min_vocab_size), cfg.vocab_multiple),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=cfg.tie_word_embeddings,
        rope_theta=cfg.rope_theta,
    )
    if cfg.arch == "phi":
        # Phi-1/2 style: parallel attention + MLP, partial rotary, LayerNorm, GELU.
        common.update(resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)
    else:
        common.update(num_key_value_heads=cfg.num_kv_heads or cfg.num_heads)
    config = config_cls(**common)
    config._attn_implementation = cfg.attn_implementation
    return config


def build_model(
    cfg: ModelConfig, tokenizer, seed: int = 42, min_vocab_size: int = 0
) -> PreTrainedModel:
    """A randomly initialised model whose vocabulary covers `tokenizer` (padded to a multiple;
    `min_vocab_size` reserves more rows, e.g. for benchmarks on random token ids)."""
    _, model_cls = _CLASSES[cfg.arch]
    torch.manual_seed(seed)
    model = model_cls(build_model_config(cfg, tokenizer, min_vocab_size))
    model.generation_config = chat_generation_config(tokenizer)
    return model


def chat_generation_config(tokenizer, also_stop: list[int] | None = None) -> GenerationConfig:
    """Stop at the end of an assistant turn (<|im_end|>) or of a document (<|endoftext|>) — those
    of them the vocabulary has; a base's own template ends turns with its own tokens: its
    tokenizer's end token and `also_stop` (the ends the base's generation config names)."""
    vocab = tokenizer.get_vocab()
    ends = [vocab[t] for t in (IM_END, EOS) if t in vocab]
    for extra in [tokenizer.eos_token_id, *(also_stop or [])]:
        if extra is not None and extra not in ends:
            ends.append(extra)
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=ends,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )


def check_vocab_fits(model: PreTrainedModel, tokenizer, where: str) -> None:
    """Fail fast when the tokenizer has ids the model's embedding cannot hold."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has only {rows} rows; "
            "use the tokenizer this model was trained with (the one saved beside it)."
        )


def count_parameters(model: torch.nn.Module, exclude_embeddings: bool = False) -> int:
    n = sum(p.numel() for p in model.parameters())
    if exclude_embeddings:
        n -= model.get_input_embeddings().weight.numel()
    return n


def load_model_and_tokenizer(model_dir: Path, where: str, **loading):
    """Load a checkpoint with the tokenizer saved beside it, checking they agree (`loading`:
    more `from_pretrained` keywords, e.g. a QLoRA base's 4-bit quantization)."""
    if not (Path(model_dir) / "config.json").exists():
        raise FileNotFoundError(
            f"{where}: no model in {model_dir} (config.json missing); run the previous stage first "
            "or pass a checkpoint folder."
        )
    from training.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **loading)
    check_vocab_fits(model, tokenizer, where=f"{where} ({model_dir})")
    model.generation_config = with_chat_ends(model.generation_config, tokenizer)
    return model, tokenizer


def with_chat_ends(saved: GenerationConfig, tokenizer) -> GenerationConfig:
    """The checkpoint's own decoding defaults (generation_config.json: the repetition penalty or
    sampling chosen on the dev probes) with the end, start and pad ids of the tokenizer saved
    beside it — what `xiaophi-serve` answers with, so the probe and `xiaophi-train chat` do too."""
    saved_ends = saved.eos_token_id
    saved_ends = [saved_ends] if isinstance(saved_ends, int) else list(saved_ends or [])
    config = chat_generation_config(tokenizer, also_stop=saved_ends)
    for key in ("repetition_penalty", "do_sample", "temperature", "top_p", "top_k"):
        value = getattr(saved, key, None)
        if value is not None:
            setattr(config, key, value)
    return config
