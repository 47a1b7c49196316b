"""Random-weight checkpoints for benchmarks, built without the training package.

`tiny` mirrors the tiny recipe's model (Phi, hidden 128, 4 layers, vocab 4096, context 256);
`seed` the seed article's config (hidden 960, 24 layers, 16 heads, ff 4096, context 512).
Speed does not depend on what the weights say, so random weights measure the same thing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PhiConfig, PhiForCausalLM, PreTrainedTokenizerFast

PRESETS = {
    # training/recipes/tiny.yaml's model (serving does not import training, so it is restated here)
    "tiny": dict(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=256,
    ),
    "seed": dict(
        hidden_size=960,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=512,
    ),
}
VOCAB_SIZE = 4096
SPECIALS = ["<|pad|>", "<|unk|>", "<|bos|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
BENCH_TEXTS = [
    "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支，它让计算机从数据中学习。",
    "画蛇添足比喻做了多余的事，反而不恰当。",
    "三国演义是中国古典四大名著之一，讲述了魏蜀吴三国的故事。",
    "北京是中华人民共和国的首都，也是一座历史悠久的城市。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "请用一句话解释什么是守株待兔。",
    "学而时习之，不亦说乎？有朋自远方来，不亦乐乎？",
]


def build_tokenizer(vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(BENCH_TEXTS * 4, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        bos_token="<|bos|>",
        eos_token="<|endoftext|>",
    )
    hf.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    # A small corpus gives a small vocabulary: fill up to the recipe's size so the LM head costs the same.
    hf.add_tokens([f"<filler_{i}>" for i in range(vocab_size - len(hf))])
    hf.chat_template = CHATML
    return hf


def build_model(
    preset: str = "tiny", seed: int = 0
) -> tuple[PhiForCausalLM, PreTrainedTokenizerFast]:
    """The preset's random-weight model (fp32, CPU) and its tokenizer, in memory."""
    tokenizer = build_tokenizer()
    config = PhiConfig(
        vocab_size=len(tokenizer),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        **PRESETS[preset],
    )
    torch.manual_seed(seed)
    model = PhiForCausalLM(config)
    ids = tokenizer.convert_tokens_to_ids
    model.generation_config = GenerationConfig(
        eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")],
        pad_token_id=ids("<|pad|>"),
        do_sample=False,
    )
    return model, tokenizer


def build_checkpoint(path: Path, preset: str = "tiny", seed: int = 0) -> Path:
    model, tokenizer = build_model(preset, seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
