"""RAG chat with the official openai client: retrieved passages reach the prompt, sources come back."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest
from openai import OpenAI

from serving.rag_chat import without_oldest_turn
from tests.rag.conftest import IDIOMS
from tests.serving.kb_helpers import FILLER, new_kb, upload
from tests.serving.test_errors import assert_error

MODEL = "tiny"
QUESTION = "守株待兔是什么意思？"
PLANTED = IDIOMS["守株待兔"]
SOURCE_FIELDS = {
    "knowledge_base",
    "document_id",
    "filename",
    "chunk_index",
    "page",
    "score",
    "snippet",
}


@pytest.fixture(scope="module")
def rag_kb(kb_server) -> str:
    kb = new_kb(kb_server)
    for pair in (FILLER[:2], FILLER[2:], [("守株待兔.txt", PLANTED.encode("gbk"))]):
        assert upload(kb_server, kb, *pair).status_code == 200
    return kb


@pytest.fixture
def client(kb_server) -> OpenAI:
    return OpenAI(base_url=kb_server.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
def prompts(kb_server, engine_requests):
    """The prompt text of every request the engine receives."""
    tokenizer = kb_server.app.state.service.tokenizer

    class Decoded:
        def __getitem__(self, index: int) -> str:
            return tokenizer.decode(engine_requests[index].prompt_ids)

    return Decoded()


def ask(client, kb: str | list[str] | None, messages=None, max_tokens: int = 8, top_k=3, **kwargs):
    extra = {"knowledge_base": kb, "retrieval_top_k": top_k} if kb else {}
    return client.chat.completions.create(
        model=MODEL,
        messages=messages or [{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=max_tokens,
        extra_body=extra,
        **kwargs,
    )


def test_non_stream_answer_has_sources_and_the_passage_in_its_prompt(client, rag_kb, prompts):
    plain = ask(client, None)
    assert "sources" not in (plain.model_extra or {})
    answer = ask(client, rag_kb)
    sources = answer.model_extra["sources"]
    assert set(sources[0]) == SOURCE_FIELDS
    assert sources[0]["filename"] == "守株待兔.txt" and PLANTED.startswith(sources[0]["snippet"])
    assert sources[0]["chunk_index"] == 0 and sources[0]["page"] is None
    assert {s["knowledge_base"] for s in sources} == {rag_kb}
    prompt = prompts[-1]
    assert f"[1] 守株待兔.txt\n{PLANTED}" in prompt
    assert prompt.index(PLANTED) < prompt.index(QUESTION)  # in the system turn, before the user's
    assert answer.usage.prompt_tokens > plain.usage.prompt_tokens
    # 128-token model: the passages that did not fit were dropped, room for the answer kept
    assert 1 <= len(sources) < 3
    assert answer.usage.prompt_tokens <= 128 - 8
    assert all(f"[{i + 1}] {s['filename']}" in prompt for i, s in enumerate(sources))


def test_stream_sends_sources_after_the_content_and_before_usage(client, rag_kb):
    whole = ask(client, rag_kb)
    chunks = list(ask(client, rag_kb, stream=True, stream_options={"include_usage": True}))
    with_sources = [i for i, c in enumerate(chunks) if "sources" in (c.model_extra or {})]
    assert len(with_sources) == 1
    at = with_sources[0]
    assert chunks[at].choices == [] and chunks[at].usage is None
    assert chunks[at].model_extra["sources"] == whole.model_extra["sources"]
    assert all(c.choices for c in chunks[:at])  # every content chunk came first
    assert chunks[at - 1].choices[0].finish_reason is not None
    assert [c.usage is not None for c in chunks[at + 1 :]] == [True]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_passages_are_prepended_to_an_existing_system_message(client, rag_kb, prompts):
    messages = [{"role": "system", "content": "你是小Phi。"}, {"role": "user", "content": QUESTION}]
    ask(client, rag_kb, messages=messages, max_tokens=2)
    prompt = prompts[-1]
    assert prompt.count("<|im_start|>system") == 1
    assert prompt.index(PLANTED) < prompt.index("你是小Phi。") < prompt.index(QUESTION)


def test_a_passage_too_long_for_the_context_is_cut_not_refused(client, kb_server, prompts):
    kb = new_kb(kb_server)
    long_text = IDIOMS["画蛇添足"] + IDIOMS["守株待兔"] + IDIOMS["画蛇添足"]  # one 55-char chunk
    assert upload(kb_server, kb, ("long.txt", long_text.encode())).status_code == 200
    answer = ask(client, kb, messages=[{"role": "user", "content": "画蛇添足是什么意思？"}])
    [source] = answer.model_extra["sources"]
    assert source["filename"] == "long.txt"
    assert answer.usage.prompt_tokens <= 128 - 8
    assert long_text[:20] in prompts[-1] and long_text not in prompts[-1]


def test_no_room_for_a_useful_passage_means_no_passage(client, rag_kb, prompts):
    long_question = "请问，" * 12 + QUESTION
    answer = ask(client, rag_kb, messages=[{"role": "user", "content": long_question}])
    assert answer.model_extra["sources"] == []
    assert "<|im_start|>system" not in prompts[-1]


def test_rag_refusals_are_openai_errors_before_any_stream(client, kb_server, rag_kb):
    missing = f"nope-{uuid.uuid4().hex[:6]}"
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            ask(client, missing, stream=stream)
    url = f"{kb_server.base_url}/chat/completions"
    body = {"model": MODEL, "knowledge_base": rag_kb, "stream": True}
    too_long = httpx.post(
        url, json={**body, "messages": [{"role": "user", "content": "天气很好" * 100}]}
    )
    assert_error(too_long, 400, "invalid_request_error", "context_length_exceeded", "messages")
    no_question = httpx.post(url, json={**body, "messages": [{"role": "user", "content": " "}]})
    assert_error(no_question, 400, "invalid_request_error", param="messages")
    bad_name = httpx.post(
        url,
        json={**body, "knowledge_base": "../x", "messages": [{"role": "user", "content": "问"}]},
    )
    assert_error(bad_name, 400, "invalid_request_error", "invalid_input")


def test_old_turns_make_room_for_the_passages(client, rag_kb, prompts):
    old_question, old_answer = "天气怎么样？" * 6, "很好。" * 12
    messages = [
        {"role": "system", "content": "你是小Phi。"},
        {"role": "user", "content": old_question},
        {"role": "assistant", "content": old_answer},
        {"role": "user", "content": QUESTION},
    ]
    answer = ask(client, rag_kb, messages=messages)
    [source, *_] = answer.model_extra["sources"]
    assert source["filename"] == "守株待兔.txt"
    prompt = prompts[-1]
    assert old_question not in prompt and old_answer not in prompt
    assert "你是小Phi。" in prompt and PLANTED[:20] in prompt and QUESTION in prompt
    assert answer.usage.prompt_tokens <= 128 - 8


def test_without_oldest_turn_keeps_system_messages_and_the_last_question():
    def conv(*roles):
        return [{"role": r, "content": f"{r}{i}"} for i, r in enumerate(roles)]

    messages = conv("system", "user", "assistant", "user", "assistant", "user")
    assert without_oldest_turn(messages) == [messages[0], *messages[3:]]
    assert without_oldest_turn(without_oldest_turn(messages)) == [messages[0], messages[5]]
    assert without_oldest_turn([messages[0], messages[5]]) is None
    leading_reply = conv("assistant", "user", "assistant", "user")
    assert without_oldest_turn(leading_reply) == leading_reply[3:]


@pytest.fixture(scope="module")
def short_kbs(kb_server) -> list[str]:
    """Two knowledge bases of short passages (several fit the test model's 128 tokens)."""
    kbs = [new_kb(kb_server), new_kb(kb_server)]
    texts = [
        [("守株待兔.txt", "守株待兔：等着不劳而获。"), ("天气.txt", "今天天气很好。")],
        [("画蛇添足.txt", "画蛇添足：多此一举。"), ("公园.txt", "我们去公园散步兔。")],
    ]
    for kb, files in zip(kbs, texts, strict=True):
        response = upload(kb_server, kb, *[(name, text.encode()) for name, text in files])
        assert response.status_code == 200, response.text
    return kbs


def test_several_knowledge_bases_answer_from_both_and_each_source_names_its_own(
    client, kb_server, short_kbs, prompts
):
    """The search API over both KBs (ranked together: tests/rag/test_service.py checks how)
    and a chat over both: the chat's passages are that search's best, as many as fit the
    128-token test model, each naming its knowledge base; a list of one is the name alone."""
    first, second = short_kbs
    both = httpx.post(
        f"{kb_server.base_url}/knowledge_bases/search",
        json={"knowledge_bases": short_kbs, "query": QUESTION, "top_k": 4},
    ).json()["data"]
    searched = [((h["knowledge_base"], h["filename"], h["chunk_index"]), h["score"]) for h in both]
    assert {kb for (kb, _, _), _ in searched} == {first, second} and len(searched) == 4
    assert searched[0][0] == (first, "守株待兔.txt", 0)

    answer = ask(client, short_kbs, top_k=4, max_tokens=2)
    sources = answer.model_extra["sources"]
    assert set(sources[0]) == SOURCE_FIELDS
    got = [((s["knowledge_base"], s["filename"], s["chunk_index"]), s["score"]) for s in sources]
    assert got and got == searched[: len(got)]
    assert all(f"[{i + 1}] {k[1]}" in prompts[-1] for i, (k, _) in enumerate(got))

    single = ask(client, [first], max_tokens=2).model_extra["sources"]
    assert single == ask(client, first, max_tokens=2).model_extra["sources"]


def test_several_knowledge_bases_refusals(client, kb_server, rag_kb, short_kbs):
    url = f"{kb_server.base_url}/chat/completions"
    question = [{"role": "user", "content": QUESTION}]

    def post(kbs):
        return httpx.post(url, json={"model": MODEL, "messages": question, "knowledge_base": kbs})

    missing = f"nope-{uuid.uuid4().hex[:6]}"
    unknown = post([rag_kb, missing])
    assert_error(unknown, 404, "not_found_error")
    assert missing in unknown.json()["error"]["message"]
    twice = post([rag_kb, *short_kbs, rag_kb])
    assert_error(twice, 400, "invalid_request_error", param="knowledge_base")
    assert "named twice" in twice.json()["error"]["message"]
    too_many = post([f"kb{i}" for i in range(9)])
    assert_error(too_many, 400, "invalid_request_error", param="knowledge_base")
    assert "at most 8" in too_many.json()["error"]["message"]
    assert_error(post([]), 400, "invalid_request_error", param="knowledge_base")
    assert_error(post([rag_kb, ""]), 400, "invalid_request_error", param="knowledge_base")
    searched = httpx.post(
        f"{kb_server.base_url}/knowledge_bases/search",
        json={"knowledge_bases": [rag_kb, missing], "query": QUESTION},
    )
    assert_error(searched, 404, "not_found_error")
    doubled = httpx.post(
        f"{kb_server.base_url}/knowledge_bases/search",
        json={"knowledge_bases": [rag_kb, rag_kb], "query": QUESTION},
    )
    assert_error(doubled, 400, "invalid_request_error")
    assert "named twice" in doubled.json()["error"]["message"]
