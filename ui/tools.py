"""The page's "使用工具": the tools it offers the model and how it runs the calls the model makes.

Offered: the dictionary tools the server runs (`/v1/tools`: `make demo` serves the idiom, word
and 歇后语 dictionaries) and, when knowledge bases are picked, `search_knowledge_base` over them,
which the page runs through the knowledge-base search API. Every call goes through the server.
"""

from __future__ import annotations

import json
from typing import Any

from ui.client import ToolCall, UIError, XiaophiClient

SEARCH_TOOL_NAME = "search_knowledge_base"
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": SEARCH_TOOL_NAME,
        "description": "在所选知识库中搜索与问题相关的段落",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "要搜索的内容"}},
            "required": ["query"],
        },
    },
}
#: Passages a search returns to the model (the small models' context is short).
SEARCH_HITS = 3
#: Answers with calls in a row before the page stops asking (a model that never stops calling).
MAX_TOOL_ROUNDS = 4


def offered_tools(client: XiaophiClient, knowledge_bases: list[str]) -> list[dict[str, Any]]:
    tools = client.list_tools()
    if knowledge_bases:
        tools.append(SEARCH_TOOL)
    return tools


def run_call(client: XiaophiClient, knowledge_bases: list[str], call: ToolCall) -> str:
    """What the tool returns, or, when the call cannot run, the reason (the model gets it as
    the tool's result and the user sees it under the answer)."""
    try:
        if call.name == SEARCH_TOOL_NAME:
            return search(client, knowledge_bases, call.arguments)
        return client.run_tool(call.name, call.arguments)
    except UIError as exc:
        return f"工具调用失败：{exc.message}"


def search(client: XiaophiClient, knowledge_bases: list[str], arguments: str) -> str:
    """The picked knowledge bases' best passages for the model's query (several: ranked
    together, each under its knowledge base's name)."""
    if not knowledge_bases:
        raise UIError("没有选择知识库")
    try:
        query = json.loads(arguments)["query"]
    except (ValueError, TypeError, KeyError) as exc:
        raise UIError(f'参数应为 {{"query": "…"}}，收到的是 {arguments}') from exc
    if not isinstance(query, str) or not query.strip():
        raise UIError(f'参数应为 {{"query": "…"}}，收到的是 {arguments}')
    hits = client.search(knowledge_bases, query, top_k=SEARCH_HITS)
    if not hits:
        return f"知识库里没有找到与“{query}”相关的内容。"
    several = len(knowledge_bases) > 1

    def where(hit) -> str:
        return f"{hit.knowledge_base}/{hit.filename}" if several else hit.filename

    return "\n\n".join(f"【{where(hit)}】{' '.join(hit.snippet.split())}" for hit in hits)
