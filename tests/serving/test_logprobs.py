"""Logprobs and `echo` through the official openai client, checked against the model itself.

The reference is a plain forward pass over the whole sequence: a token's logprob is the
log-softmax of the model's raw logits at the position before it (vLLM's default, before any
penalty or temperature)."""

from __future__ import annotations

import math

import pytest
import torch
from openai import OpenAI

MODEL = "tiny"


@pytest.fixture
def client(engine_server) -> OpenAI:
    return OpenAI(base_url=engine_server.base_url, api_key="unused", max_retries=0, timeout=60)


def raw_logprobs(reference, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab]: row i is the distribution of the token after ids[: i + 1]."""
    with torch.no_grad():
        logits = reference.model(torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def token_text(reference, token: int, before: list[int] = ()) -> str:
    """A token's text as vLLM names it: decoded alone; if that ends inside a character, what it
    completes after the (up to 4) tokens chosen before it, or "" while still incomplete."""
    decode = reference.tokenizer.decode
    alone = decode([token])
    if not alone.endswith("\ufffd"):
        return alone
    for n in range(1, min(len(before), 4) + 1):
        context = list(before[-n:])
        whole = decode(context + [token])
        if whole.endswith("\ufffd"):
            continue
        while context and decode([context[-1]]).endswith("\ufffd"):
            context.pop()  # those showed "" before: their bytes are this token's text
        prefix = decode(context) if context else ""
        return whole[len(prefix) :] if whole.startswith(prefix) else whole
    return ""


def texts_in_order(reference, ids: list[int]) -> list[str]:
    return [token_text(reference, t, ids[:i]) for i, t in enumerate(ids)]


def test_chat_logprobs_are_the_models_own_and_the_top_list_is_ranked(client, reference):
    prompt = "你好！很高兴认识你。"
    ids = reference.chat_ids(prompt)
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=12,
        logprobs=True,
        top_logprobs=3,
    )
    generated = reference.greedy_ids(ids, 12)
    content = answer.choices[0].logprobs.content
    assert [c.token for c in content] == texts_in_order(reference, generated)
    assert len(content) == answer.usage.completion_tokens  # EOS too, when it ends the answer
    table = raw_logprobs(reference, ids + generated)
    for i, (entry, token) in enumerate(zip(content, generated, strict=True)):
        row = table[len(ids) - 1 + i]
        assert entry.logprob == pytest.approx(row[token].item(), abs=1e-4)
        assert entry.bytes == list(entry.token.encode())
        best = row.topk(3)
        assert [t.token for t in entry.top_logprobs] == [
            token_text(reference, t, generated[:i]) for t in best.indices.tolist()
        ]
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(
            best.values.tolist(), abs=1e-4
        )
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen one is the top


def test_streamed_chat_logprobs_equal_the_whole_answers(client):
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "北京是中华人民共和国的首都。"}],
        temperature=0,
        max_tokens=16,
        logprobs=True,
        top_logprobs=2,
    )
    whole = client.chat.completions.create(**kwargs).choices[0].logprobs.content
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    streamed = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in whole]
    # without logprobs: no logprobs anywhere
    plain = client.chat.completions.create(**{**kwargs, "logprobs": False, "top_logprobs": None})
    assert plain.choices[0].logprobs is None


def test_top_logprobs_without_logprobs_is_refused(client):
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], top_logprobs=2
        )
    assert caught.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            logprobs=True,
            top_logprobs=21,
        )
    assert caught.value.body["param"] == "top_logprobs"


def test_echo_with_no_new_tokens_scores_the_prompt_as_lm_eval_asks(client, reference):
    text = "守株待兔比喻死守狭隘经验"
    ids = reference.tokenizer(text)["input_ids"]
    answer = client.completions.create(
        model=MODEL, prompt=text, echo=True, logprobs=2, max_tokens=0, temperature=0
    )
    choice = answer.choices[0]
    # as vLLM does: one token is generated, counted and given its finish reason, not shown
    assert choice.text == text and choice.finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens == 1 and answer.usage.prompt_tokens == len(ids)
    lp = choice.logprobs
    # the first token has no logprob and is decoded alone; the others in context
    assert lp.tokens == [token_text(reference, ids[0])] + [
        token_text(reference, t, ids[1:i]) for i, t in enumerate(ids) if i
    ]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    table = raw_logprobs(reference, ids)
    for i in range(1, len(ids)):
        assert lp.token_logprobs[i] == pytest.approx(table[i - 1, ids[i]].item(), abs=1e-4)
        top = lp.top_logprobs[i]
        assert lp.tokens[i] in top  # the prompt's token, then the top 2
        best = table[i - 1].topk(2).indices.tolist()
        assert {token_text(reference, t, ids[1:i]) for t in best} <= set(top) and len(top) <= 3
    offsets = [0]
    for token in lp.tokens[:-1]:
        offsets.append(offsets[-1] + len(token))
    assert lp.text_offset == offsets
    # the sum of a continuation's logprobs: what lm-eval's loglikelihood adds up
    total = sum(lp.token_logprobs[1:])
    assert math.isfinite(total) and total < 0


def test_echo_then_continuation_in_one_answer_stream_and_not(client, reference):
    text = "学而时习之"
    ids = reference.tokenizer(text)["input_ids"]
    kwargs = dict(model=MODEL, prompt=text, echo=True, logprobs=1, max_tokens=6, temperature=0)
    whole = client.completions.create(**kwargs).choices[0]
    generated = reference.greedy_ids(ids, 6)
    assert whole.text == text + reference.tokenizer.decode(generated, skip_special_tokens=True)
    assert len(whole.logprobs.tokens) == len(ids) + len(generated)
    table = raw_logprobs(reference, ids + generated)
    for i in range(1, len(ids) + len(generated)):
        token = (ids + generated)[i]
        assert whole.logprobs.token_logprobs[i] == pytest.approx(
            table[i - 1, token].item(), abs=1e-4
        )
    chunks = list(client.completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.text
    streamed = [
        v
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for v in c.choices[0].logprobs.token_logprobs
    ]
    assert streamed == whole.logprobs.token_logprobs
    # echo without logprobs: the prompt's text, no logprobs
    plain = client.completions.create(
        model=MODEL, prompt=text, echo=True, max_tokens=2, temperature=0
    )
    assert plain.choices[0].text.startswith(text) and plain.choices[0].logprobs is None


def test_completion_logprobs_without_echo_cover_the_new_tokens_only(client, reference):
    ids = [5, 6, 7, 8]
    answer = client.completions.create(
        model=MODEL, prompt=ids, logprobs=0, max_tokens=5, temperature=0
    )
    generated = reference.greedy_ids(ids, 5)
    lp = answer.choices[0].logprobs
    assert lp.tokens == texts_in_order(reference, generated)
    table = raw_logprobs(reference, ids + generated)
    for i, token in enumerate(generated):
        assert lp.token_logprobs[i] == pytest.approx(
            table[len(ids) - 1 + i, token].item(), abs=1e-4
        )
        assert list(lp.top_logprobs[i]) == [lp.tokens[i]]  # logprobs=0: itself
    assert lp.text_offset[0] == 0


def test_logprobs_are_taken_before_penalties_and_temperature(client, reference):
    """vLLM's default (`--logprobs-mode raw_logprobs`): what the model said, not what was
    sampled from; so a penalised or sampled request reports the model's own numbers."""
    prompt = "春眠不觉晓，处处闻啼鸟。"
    ids = reference.chat_ids(prompt)
    vocab = reference.model.config.vocab_size
    for extra in (
        dict(temperature=0, extra_body={"repetition_penalty": 1.8}, frequency_penalty=1.5),
        dict(temperature=0.7, seed=3),
    ):
        answer = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=10,
            logprobs=True,
            **extra,
        )
        sequence = list(ids)
        for entry in answer.choices[0].logprobs.content:
            row = raw_logprobs(reference, sequence)[-1]
            # the token the server chose: its text and the model's raw logprob identify it
            chosen = sequence[len(ids) :]
            matches = [
                t
                for t in range(vocab)
                if abs(row[t].item() - entry.logprob) < 1e-4
                and token_text(reference, t, chosen) == entry.token
            ]
            assert matches, (extra, entry)
            sequence.append(matches[0])
