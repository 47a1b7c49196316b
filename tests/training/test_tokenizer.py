"""Tokenizer: special tokens, chat template, streaming training, save/load round trip."""

import pytest
from transformers import AutoTokenizer

from tests.conftest import TINY_TEXTS
from training.chat_format import IM_END, IM_START, SPECIAL_TOKENS
from training.tokenizer import MIN_VOCAB_SIZE, chars_per_token, train_tokenizer

CONV = [
    {"role": "system", "content": "你是小Phi。"},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好！"},
    {"role": "user", "content": "画蛇添足是什么意思？"},
    {"role": "assistant", "content": "比喻做了多余的事。"},
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TINY_TEXTS, vocab_size=400, min_frequency=1)


def test_special_tokens_have_fixed_ids(tok):
    assert tok.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(len(SPECIAL_TOKENS)))
    assert tok.bos_token_id == 2 and tok.eos_token_id == 3 and tok.pad_token_id == 0
    # special tokens are atomic, never split into bytes
    assert tok(f"{IM_START}user", add_special_tokens=False)["input_ids"][
        0
    ] == tok.convert_tokens_to_ids(IM_START)


def test_training_consumes_a_stream_and_learns_chinese_merges(tok):
    consumed = []

    def stream():
        for text in TINY_TEXTS:
            consumed.append(text)
            yield text

    t = train_tokenizer(stream(), vocab_size=2000, min_frequency=1)
    assert len(consumed) == len(TINY_TEXTS)
    # byte-level: any text round-trips, including characters never seen in training
    for text in ["今天天气很好", "龘靐齉", "emoji 🙂 mixed 中文 123"]:
        assert t.decode(t(text, add_special_tokens=False)["input_ids"]) == text
    # merges make seen Chinese text far shorter than its UTF-8 bytes (3 bytes per character)
    assert chars_per_token(t, ["今天天气很好，我们去公园散步吧。"]) > 1.0


def test_chat_template_renders_roles_and_generation_prompt(tok):
    text = tok.apply_chat_template(CONV, tokenize=False)
    assert text.startswith(
        "<|im_start|>system\n你是小Phi。<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n"
    )
    assert text.endswith("<|im_start|>assistant\n比喻做了多余的事。<|im_end|>\n")
    prompt = tok.apply_chat_template(CONV[:4], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(
        "<|im_start|>user\n画蛇添足是什么意思？<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(Exception, match="unknown role"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_assistant_mask_covers_exactly_the_answers_and_their_end_token(tok):
    enc = tok.apply_chat_template(
        CONV, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    spans, current = [], []
    for token, m in zip(ids, mask, strict=True):
        if m:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    assert [tok.decode(s) for s in spans] == [f"你好！{IM_END}", f"比喻做了多余的事。{IM_END}"]


def test_save_and_reload_keeps_template_and_tokens(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").exists()
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.apply_chat_template(CONV, tokenize=False) == tok.apply_chat_template(
        CONV, tokenize=False
    )
    assert again("三国演义")["input_ids"] == tok("三国演义")["input_ids"]
    assert again.eos_token == tok.eos_token and again.pad_token == tok.pad_token


def test_vocabulary_too_small_for_special_tokens_is_refused():
    with pytest.raises(ValueError, match=f"at least {MIN_VOCAB_SIZE}"):
        train_tokenizer(TINY_TEXTS, vocab_size=100)
