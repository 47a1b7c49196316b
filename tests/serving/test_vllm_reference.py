"""A real vLLM (CPU build) as the reference: xiaophi's greedy chat equals vLLM's on the same
checkpoint, and vLLM answers echo + prompt logprobs (the shape xiaophi is to match)."""

from __future__ import annotations

import math
from itertools import accumulate

import pytest
from openai import OpenAI

from tests.serving.conftest import run_server, tiny_settings

pytestmark = pytest.mark.slow

# the tiny random model's answers (greedy, with the checkpoint's repetition penalty): two end on
# whole characters, one stops early (end of turn), one is cut by max_tokens inside a character
PROMPTS = [
    "你好！很高兴认识你。",
    "守株待兔比喻死守狭隘经验，不知变通。",
    "北京是中华人民共和国的首都。",
    "三国演义是中国古典四大名著之一。",
]


def greedy_chats(base_url: str, model: str, **extra_body) -> list:
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    return [
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            max_tokens=16,
            extra_body=extra_body or None,
        )
        for prompt in PROMPTS
    ]


def test_greedy_chat_equals_vllm(vllm_server):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(vllm_server.checkpoint))
    # return_token_ids: vLLM's own field, the generated ids beside the text
    theirs = greedy_chats(vllm_server.base_url, vllm_server.model, return_token_ids=True)
    with run_server(tiny_settings(vllm_server.checkpoint, ui=False)) as xiaophi:
        ours = greedy_chats(xiaophi.base_url, "tiny")
    compared_text = 0
    for prompt, vllm_answer, our_answer in zip(PROMPTS, theirs, ours, strict=True):
        vllm_choice, our_choice = vllm_answer.choices[0], our_answer.choices[0]
        assert vllm_choice.message.content, f"vLLM gave no text for {prompt!r}"
        assert our_choice.finish_reason == vllm_choice.finish_reason, prompt
        # the same chat template rendered to the same tokens, the same number of tokens out
        assert our_answer.usage.prompt_tokens == vllm_answer.usage.prompt_tokens, prompt
        assert our_answer.usage.completion_tokens == vllm_answer.usage.completion_tokens, prompt
        # the same tokens: xiaophi's text is the decoding of vLLM's ids
        decoded = tokenizer.decode(vllm_choice.model_extra["token_ids"], skip_special_tokens=True)
        assert our_choice.message.content == decoded, prompt
        if decoded.endswith("\ufffd"):
            # An answer that ends inside a character (random weights emit byte fragments): vLLM's
            # detokenizer (tokenizers' DecodeStream) holds text back while it ends in an
            # incomplete UTF-8 sequence and drops what it holds when generation ends; xiaophi
            # sends the tail as U+FFFD. A trained model's answers end on whole characters.
            assert decoded.startswith(vllm_choice.message.content), prompt
        else:
            assert our_choice.message.content == vllm_choice.message.content, prompt
            compared_text += 1
    assert compared_text >= 2, "too few answers end on a whole character: change PROMPTS"


def test_vllm_echoes_prompt_with_logprobs(vllm_server):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = "今天天气很好，我们去公园散步吧。"
    client = OpenAI(base_url=vllm_server.base_url, api_key="unused", max_retries=0, timeout=120)
    answer = client.completions.create(
        model=vllm_server.model, prompt=prompt, echo=True, logprobs=1, max_tokens=0
    )
    choice = answer.choices[0]
    assert choice.text == prompt  # the prompt alone: vLLM runs one step (max_tokens 1), counted
    # in usage.completion_tokens, and sends neither its text nor its logprob
    logprobs = choice.logprobs
    n = answer.usage.prompt_tokens
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == n
    # each token's text as vLLM's incremental detokenizer saw it ("" or U+FFFD for a token that
    # ends inside a character), and its offset: the lengths of those texts before it
    assert logprobs.text_offset == list(
        accumulate((len(t) for t in logprobs.tokens[:-1]), initial=0)
    )
    # the first token has nothing before it to be predicted from
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(len(top) >= 1 for top in logprobs.top_logprobs[1:])

    # each value is the model's own log-probability of that prompt token given the ones before
    # it: vLLM reports raw log-probabilities (--logprobs-mode raw_logprobs, its default), the
    # checkpoint's repetition penalty does not touch them
    tokenizer = AutoTokenizer.from_pretrained(str(vllm_server.checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(vllm_server.checkpoint)).eval()
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert len(ids) == n
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    expected = torch.log_softmax(logits, dim=-1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])
    for got, want in zip(logprobs.token_logprobs[1:], expected[:, 0].tolist(), strict=True):
        assert math.isclose(got, want, abs_tol=1e-3), (got, want)
