"""The page's HTTP client against a real server: KBs, uploads, streamed (RAG) chat, failures."""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from tests.serving.conftest import serve
from ui.client import ChatSettings, Source, UIError, XiaophiClient

QUICK = ChatSettings(temperature=0.0, max_tokens=8)


def kb_name() -> str:
    return f"kb-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(ui_server):
    with XiaophiClient(ui_server.url) as client:
        yield client


def collect(events) -> tuple[str, list[list[Source]]]:
    text, sources = "", []
    for event in events:
        if isinstance(event, str):
            text += event
        else:
            sources.append(event)
    return text, sources


def test_models_and_health(client):
    assert client.list_models()[0] == "tiny"  # the chat model first, then the KB embedder
    assert client.health()


def test_stream_chat_without_kb_yields_text_only(client):
    messages = [{"role": "user", "content": "你好"}]
    events = list(client.stream_chat(messages, ChatSettings(temperature=0.0, max_tokens=12)))
    assert len(events) >= 2 and all(isinstance(e, str) for e in events)
    # multi-turn: the answer goes back as history and the server accepts it
    history = messages + [{"role": "assistant", "content": "".join(events)}]
    text, sources = collect(
        client.stream_chat(history + [{"role": "user", "content": "再说一次"}], QUICK)
    )
    assert text and not sources


def test_kb_create_upload_list_search_and_rag_chat(client, gbk_file, tmp_path):
    name = kb_name()
    assert client.create_knowledge_base(name)["name"] == name
    assert name in [kb["name"] for kb in client.list_knowledge_bases()]

    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    results = client.upload_documents(name, [gbk_file, empty])
    by_name = {r.filename: r for r in results}
    assert by_name[gbk_file.name].status == "added" and by_name[gbk_file.name].chunks >= 2
    assert by_name["empty.txt"].status == "rejected" and by_name["empty.txt"].reason

    again = client.upload_documents(name, [gbk_file])
    assert [r.status for r in again] == ["duplicate"]

    (doc,) = client.list_documents(name)
    assert doc["filename"] == gbk_file.name
    assert doc["encoding"].lower() in ("gbk", "gb18030", "gb2312")

    hits = client.search(name, "画蛇添足", top_k=2)
    assert hits and hits[0].filename == gbk_file.name and "蛇" in hits[0].snippet

    settings = ChatSettings(temperature=0.0, max_tokens=8, knowledge_base=name)
    text, sources = collect(
        client.stream_chat([{"role": "user", "content": "守株待兔是什么意思？"}], settings)
    )
    assert len(sources) == 1
    assert sources[0] and all(s.filename == gbk_file.name for s in sources[0])
    assert any("兔" in s.snippet for s in sources[0])
    assert all(s.score is not None for s in sources[0])


def test_upload_where_every_file_is_rejected_returns_reasons(client, tmp_path):
    name = kb_name()
    client.create_knowledge_base(name)
    binary = tmp_path / "程序.exe"
    binary.write_bytes(b"MZ\x00\x01")
    (result,) = client.upload_documents(name, [binary])
    assert result.status == "rejected" and result.reason


def test_upload_and_chat_refuse_a_missing_kb(client, gbk_file):
    with pytest.raises(UIError, match="找不到"):
        client.upload_documents("no-such-kb", [gbk_file])
    with pytest.raises(UIError, match="找不到"):
        list(
            client.stream_chat(
                [{"role": "user", "content": "你好"}], ChatSettings(knowledge_base="no-such-kb")
            )
        )
    with pytest.raises(UIError, match="知识库"):
        client.upload_documents("", [gbk_file])
    with pytest.raises(UIError, match="名称"):
        client.create_knowledge_base("  ")


def test_request_too_long_is_readable(client):
    messages = [{"role": "user", "content": "春眠不觉晓，处处闻啼鸟。" * 200}]
    with pytest.raises(UIError) as info:
        list(client.stream_chat(messages, QUICK))
    assert info.value.status == 400 and "请求太长" in info.value.message


def test_body_too_large_is_readable(client):
    messages = [{"role": "user", "content": "长" * (1 << 20)}]
    with pytest.raises(UIError) as info:
        list(client.stream_chat(messages, QUICK))
    assert info.value.status == 413 and "请求太大" in info.value.message


def test_api_down_is_readable(dead_url):
    with XiaophiClient(dead_url) as client, pytest.raises(UIError, match="无法连接") as info:
        client.list_knowledge_bases()
    assert dead_url in info.value.message


def test_wrong_or_missing_key_is_readable(keyed_server):
    for key in (None, "wrong"):
        with XiaophiClient(keyed_server.url, key) as client, pytest.raises(UIError) as info:
            client.list_knowledge_bases()
        assert info.value.status == 401 and "API key" in info.value.message
    with XiaophiClient(keyed_server.url, "secret") as client:
        assert client.list_knowledge_bases() == []
        text, _ = collect(client.stream_chat([{"role": "user", "content": "你好"}], QUICK))
        assert text


def fake_chat_server(stream_lines: list[str], seen: list[dict]):
    """An OpenAI-compatible app whose chat stream is `stream_lines` (SSE data lines, as sent);
    the headers of each chat request go to `seen`."""
    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "fake", "object": "model"}]}

    @app.post("/v1/chat/completions")
    def chat(request: Request):
        seen.append(dict(request.headers))
        return StreamingResponse(
            iter(f"data: {line}\n\n" for line in stream_lines), media_type="text/event-stream"
        )

    return app


def chunk(content: str | None = None, finish: str | None = None, **extra) -> str:
    choices = (
        []
        if content is None and finish is None
        else [
            {"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}
        ]
    )
    body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "fake"}
    return json.dumps({**body, "choices": choices, **extra}, ensure_ascii=False)


def test_stream_chat_through_the_openai_client_reads_text_sources_and_failures():
    hello = [{"role": "user", "content": "你好"}]
    source = {"filename": "a.txt", "text": "守株待兔", "score": 0.5, "chunk_index": 1}
    cases = {
        "whole": [
            chunk("你"),
            chunk("好"),
            chunk(finish="stop"),
            chunk(sources=[source]),
            "[DONE]",
        ],
        "error": [chunk("你"), json.dumps({"error": {"message": "显存不足", "code": "oom"}})],
        "cut": [chunk("你")],  # the connection closes before the answer says it ended
    }
    seen: list[dict] = []
    for case, lines in cases.items():
        with serve(fake_chat_server(lines, seen)) as url, XiaophiClient(url) as client:
            events = client.stream_chat(hello, QUICK)
            if case == "whole":
                text, sources = collect(events)
                assert text == "你好"
                assert [
                    [(s.filename, s.snippet, s.score, s.chunk_index) for s in found]
                    for found in sources
                ] == [[("a.txt", "守株待兔", 0.5, 1)]]
            elif case == "error":
                with pytest.raises(UIError, match="生成过程中出错。服务器说：显存不足") as info:
                    collect(events)
                assert info.value.code == "oom"
            else:
                with pytest.raises(UIError, match="回答中途断开了"):
                    collect(events)
    # without a key the client sends no Authorization header (as the KB routes do)
    assert seen and all("authorization" not in headers for headers in seen)


def test_the_page_tools_run_through_the_server(tools_ui_server, gbk_file):
    """What "使用工具" offers and runs: the server's dictionary tools, and a search of the
    picked knowledge base (through its search API); a call that cannot run says why."""
    from tests.tool_model import LOOKUP, lookup_idiom
    from ui.client import ToolCall
    from ui.tools import SEARCH_TOOL, offered_tools, run_call

    with XiaophiClient(tools_ui_server.url) as client:
        assert offered_tools(client, []) == [LOOKUP]
        name, other = kb_name(), kb_name()
        client.create_knowledge_base(name)
        client.upload_documents(name, [gbk_file])
        assert offered_tools(client, [name]) == [LOOKUP, SEARCH_TOOL]

        lookup = ToolCall("call-1", "lookup_idiom", '{"term": "守株待兔"}')
        assert run_call(client, [name], lookup) == lookup_idiom("守株待兔")
        search = ToolCall("call-2", "search_knowledge_base", '{"query": "守株待兔"}')
        found = run_call(client, [name], search)
        assert found.startswith(f"【{gbk_file.name}】") and "兔子" in found
        # two knowledge bases: one search through the server, each passage under its KB's name
        client.create_knowledge_base(other)
        rabbit = gbk_file.parent / "other.txt"
        rabbit.write_text("兔子跑得很快，乌龟爬得很慢。", encoding="utf-8")
        client.upload_documents(other, [rabbit])
        both = run_call(client, [name, other], search)
        assert both.startswith(f"【{name}/{gbk_file.name}】") and f"【{other}/other.txt】" in both
        assert "工具调用失败" in run_call(
            client, [], ToolCall("c", "search_knowledge_base", '{"query": "兔"}')
        )
        bad = run_call(client, [name], ToolCall("c", "search_knowledge_base", '{"q": 1}'))
        assert bad.startswith("工具调用失败") and '{"q": 1}' in bad
        unknown = run_call(client, [name], ToolCall("c", "lookup_word", '{"term": "天气"}'))
        assert unknown.startswith("工具调用失败") and "lookup_idiom" in unknown  # what it runs


def test_stream_chat_puts_streamed_tool_calls_together(tools_ui_server, tool_terms):
    from tests.tool_model import LOOKUP, QUESTION
    from ui.client import ToolCall

    with XiaophiClient(tools_ui_server.url) as client:
        events = list(
            client.stream_chat(
                [{"role": "user", "content": QUESTION.format(w=tool_terms[0])}],
                ChatSettings(temperature=0.0, max_tokens=64),
                tools=[LOOKUP],
            )
        )
    (call,) = [e for e in events if isinstance(e, ToolCall)]
    assert call.name == "lookup_idiom" and json.loads(call.arguments) == {"term": tool_terms[0]}
    assert call.id.startswith("chatcmpl-tool-") and events[-1] is call
