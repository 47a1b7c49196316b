"""The page's text both ways: the chat history as the API wants it back, and how sources,
upload results and document listings read in the page. Pure functions, no gradio."""

from __future__ import annotations

import logging
from typing import Any

from ui.client import Source, UIError, UploadResult

logger = logging.getLogger(__name__)

SOURCES_TITLE = "参考来源"
ERROR_TITLE = "出错了"
TOOL_TITLE = "调用工具"
SNIPPET_CHARS = 120


def readable(exc: BaseException) -> str:
    """Never a stack trace in the page: a UIError says itself, anything else gets one line."""
    if isinstance(exc, UIError):
        return exc.message
    logger.exception("unexpected error in the UI", exc_info=exc)
    return f"意外错误：{type(exc).__name__}: {exc}"


def message_text(content: Any) -> str:
    """The text of a chatbot message, whichever shape gradio hands it over in."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, list):
        return "".join(message_text(part) for part in content)
    return ""


def _is_annotation(message: dict[str, Any]) -> bool:
    """Sources and error notes are shown in the chat but are not part of the conversation."""
    metadata = message.get("metadata") or {}
    return bool(metadata.get("title"))


def api_messages(history: list[dict[str, Any]], system_prompt: str) -> list[dict[str, str]]:
    """The conversation as the API wants it: system prompt, then user/assistant turns."""
    messages = []
    if system_prompt.strip():
        messages.append({"role": "system", "content": system_prompt.strip()})
    for message in history:
        if message.get("role") not in ("user", "assistant") or _is_annotation(message):
            continue
        text = message_text(message.get("content"))
        if text:
            messages.append({"role": message["role"], "content": text})
    return messages


def format_sources(sources: list[Source]) -> str:
    lines = []
    several = len({source.knowledge_base for source in sources}) > 1
    for rank, source in enumerate(sources, 1):
        name = f"{source.knowledge_base} / {source.filename}" if several else source.filename
        where = [f"**{name}**"]
        if source.chunk_index is not None:
            where.append(f"片段 #{source.chunk_index}")
        if source.page is not None:
            where.append(f"第 {source.page} 页")
        if source.score is not None:
            where.append(f"score {source.score:.4f}")
        snippet = " ".join(source.snippet.split())
        if len(snippet) > SNIPPET_CHARS:
            snippet = snippet[:SNIPPET_CHARS] + "…"
        lines.append(f"{rank}. {' · '.join(where)}\n   > {snippet}")
    return "\n".join(lines) if lines else "（没有检索到相关内容）"


def sources_note(sources: list[Source]) -> dict[str, Any]:
    """A RAG answer's sources, as a titled message under it."""
    return {
        "role": "assistant",
        "content": format_sources(sources),
        "metadata": {"title": f"{SOURCES_TITLE}（{len(sources)}）"},
    }


def tool_note(name: str, arguments: str, result: str) -> dict[str, Any]:
    """One tool call the model made and what it returned, folded under its title."""
    return {
        "role": "assistant",
        "content": f"参数：`{arguments}`\n\n结果：\n\n{result}",
        "metadata": {"title": f"{TOOL_TITLE}：{name}", "status": "done"},
    }


def error_note(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text, "metadata": {"title": ERROR_TITLE}}


def format_upload_results(results: list[UploadResult]) -> str:
    lines = []
    for r in results:
        if r.status == "added":
            chunks = f"，{r.chunks} 个片段" if r.chunks is not None else ""
            lines.append(f"- **{r.filename}**：已添加{chunks}")
        elif r.status == "duplicate":
            same = f"（与已有文档 {r.duplicate_of} 相同）" if r.duplicate_of else ""
            lines.append(f"- **{r.filename}**：重复，未再添加{same}")
        else:
            why = r.reason or r.error or "未知原因"
            lines.append(f"- **{r.filename}**：被拒绝——{why}")
    return "\n".join(lines)


def format_documents(kb: str, documents: list[dict[str, Any]]) -> str:
    if not kb:
        return ""
    if not documents:
        return f"知识库 **{kb}** 里还没有文档。"
    rows = [
        f"知识库 **{kb}** 的文档（{len(documents)} 个）：",
        "",
        "| 文件 | 片段数 | 格式 | 编码 |",
        "|---|---|---|---|",
    ]
    for doc in documents:
        rows.append(
            f"| {doc.get('filename', '?')} | {doc.get('chunks', '?')} | "
            f"{doc.get('format') or '-'} | {doc.get('encoding') or '-'} |"
        )
    return "\n".join(rows)
