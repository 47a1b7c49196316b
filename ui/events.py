"""What the page does when the user acts: each handler calls the API through `ui.client` and
returns the page's updates. Gradio names each event's API endpoint after its handler."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from ui.client import ChatSettings, ToolCall, UIError, UploadResult, XiaophiClient
from ui.page_text import (
    api_messages,
    error_note,
    format_documents,
    format_upload_results,
    readable,
    sources_note,
    tool_note,
)
from ui.tools import MAX_TOOL_ROUNDS, offered_tools, run_call

logger = logging.getLogger(__name__)


@dataclass
class PageEvents:
    """The handlers of one page, talking to the xiaophi server at `api_url`.

    Their key: `request_key(request)` when given (mounted in xiaophi-serve: the key the user
    logged in with), else the one typed into the page, else `api_key`.
    """

    api_url: str
    api_key: str | None = None
    default_kb: str | None = None
    request_key: Callable[[gr.Request | None], str | None] | None = None

    def client_for(self, page_key: str, request: gr.Request | None) -> XiaophiClient:
        if self.request_key is not None:
            return XiaophiClient(self.api_url, self.request_key(request))
        return XiaophiClient(self.api_url, (page_key or "").strip() or self.api_key)

    def kb_picker(self, page_key: str, selected: list[str] | None, request: gr.Request | None):
        """Picker update and a status line; the picker empties when the API fails."""
        try:
            with self.client_for(page_key, request) as client:
                names = [kb["name"] for kb in client.list_knowledge_bases()]
        except Exception as exc:
            return gr.update(choices=[], value=[]), readable(exc)
        value = [name for name in picked(selected) if name in names]
        return gr.update(choices=names, value=value), f"已刷新：{len(names)} 个知识库。"

    def on_load(self, page_key: str, request: gr.Request):
        return self.kb_picker(page_key, [self.default_kb] if self.default_kb else [], request)

    def documents_of(self, page_key: str, kbs: list[str] | None, request: gr.Request) -> str:
        try:
            with self.client_for(page_key, request) as client:
                listings = [format_documents(kb, client.list_documents(kb)) for kb in picked(kbs)]
        except Exception as exc:
            return readable(exc)
        return "\n\n".join(listings)

    def on_create(self, page_key: str, name: str, request: gr.Request):
        try:
            with self.client_for(page_key, request) as client:
                created = client.create_knowledge_base(name)
        except Exception as exc:
            return gr.update(), readable(exc), gr.update()
        created_name = created.get("name", name.strip())
        picker, _ = self.kb_picker(page_key, [created_name], request)
        return picker, f"已创建知识库 **{created_name}**。", ""

    def on_upload(
        self,
        page_key: str,
        kbs: list[str] | None,
        files: list[str] | None,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008
    ):
        paths = [Path(f) for f in files or []]
        names = picked(kbs)
        if not names:
            return "请先在上方选择一个知识库。", gr.update(), gr.update()
        if len(names) > 1:
            chosen = "、".join(names)
            return f"上传时请只选一个知识库（现在选了 {chosen}）。", gr.update(), gr.update()
        kb = names[0]
        if not paths:
            return "请先选择要上传的文件。", gr.update(), gr.update()
        results: list[UploadResult] = []
        try:
            with self.client_for(page_key, request) as client:
                # One file per request, so the progress bar moves as each is parsed and embedded.
                for i, path in enumerate(paths):
                    progress((i, len(paths)), desc=f"正在处理 {path.name}（{i + 1}/{len(paths)}）")
                    results.extend(client.upload_documents(kb, [path]))
                progress((len(paths), len(paths)), desc="完成")
                listing = format_documents(kb, client.list_documents(kb))
        except Exception as exc:
            done = format_upload_results(results)
            text = "\n\n".join(part for part in (done, readable(exc)) if part)
            return text, gr.update(), gr.update()
        # The knowledge base has the files now: gradio's copies go, and the picker empties.
        for path in paths:
            forget_upload(path)
        added = sum(r.status == "added" for r in results)
        summary = f"上传完成：{added}/{len(results)} 个文件已添加到 **{kb}**。"
        return summary + "\n\n" + format_upload_results(results), listing, None

    def on_chat(
        self,
        message: str,
        history: list[dict[str, Any]],
        system_prompt: str,
        temperature: float,
        top_p: float,
        max_tokens: float,
        kbs: list[str] | None,
        use_tools: bool,
        page_key: str,
        request: gr.Request,
    ) -> Iterator[tuple[list[dict[str, Any]], str, Any]]:
        """Streams the answer into the chat (then its sources); the send button is off meanwhile.

        With `use_tools` the model is offered the server's tools (and a search of the picked
        knowledge base, instead of the server's own retrieval); each call it makes is run
        through the server, shown folded above the answer, and sent back until it answers."""
        history = list(history or [])
        if not (message or "").strip():
            yield history, "", gr.update()
            return
        conversation = api_messages(history, system_prompt) + [{"role": "user", "content": message}]
        history.append({"role": "user", "content": message})
        answer = {"role": "assistant", "content": ""}
        history.append(answer)
        yield history, "", gr.update(interactive=False)  # one question at a time
        settings = ChatSettings(
            temperature=float(temperature),
            top_p=float(top_p),
            max_tokens=int(max_tokens),
            knowledge_base=chat_knowledge_base(kbs),
        )
        try:
            with self.client_for(page_key, request) as client:
                tools = offered_tools(client, picked(kbs)) if use_tools else []
                if tools and picked(kbs):  # the model searches the knowledge bases by its tool
                    settings.knowledge_base = None
                for rounds in range(MAX_TOOL_ROUNDS + 1):
                    calls: list[ToolCall] = []
                    for event in client.stream_chat(conversation, settings, tools=tools):
                        if isinstance(event, str):
                            answer["content"] += event
                        elif isinstance(event, ToolCall):
                            calls.append(event)
                        else:
                            history.append(sources_note(event))
                        yield history, "", gr.update()
                    if not calls:
                        break
                    if rounds == MAX_TOOL_ROUNDS:
                        raise UIError(f"模型连续调用工具超过 {MAX_TOOL_ROUNDS} 轮，已停止。")
                    conversation.append(
                        {
                            "role": "assistant",
                            "content": answer["content"] or None,
                            "tool_calls": [call.as_message_part() for call in calls],
                        }
                    )
                    answer["content"] = ""
                    for call in calls:
                        result = run_call(client, picked(kbs), call)
                        conversation.append(
                            {"role": "tool", "tool_call_id": call.id, "content": result}
                        )
                        here = next(i for i, m in enumerate(history) if m is answer)  # not ==
                        history.insert(here, tool_note(call.name, call.arguments, result))
                        yield history, "", gr.update()
            if not answer["content"]:
                answer["content"] = "（模型没有生成任何文字）"
        except Exception as exc:
            if not answer["content"]:
                history.remove(answer)
            history.append(error_note(readable(exc)))
        yield history, "", gr.update(interactive=True)


def picked(kbs: list[str] | str | None) -> list[str]:
    """The picker's value as a list of names (gradio gives a list; a single name is one)."""
    if not kbs:
        return []
    return [kbs] if isinstance(kbs, str) else [kb for kb in kbs if kb]


def chat_knowledge_base(kbs: list[str] | str | None) -> str | list[str] | None:
    """A chat request's `knowledge_base`: one name as itself, several as a list, none as None."""
    names = picked(kbs)
    if not names:
        return None
    return names[0] if len(names) == 1 else names


def forget_upload(path: Path) -> None:
    """Delete gradio's copy of an uploaded file (and its folder, when empty); only in its cache."""
    try:
        cache = Path(get_upload_folder()).resolve()
        path = path.resolve()
        if cache not in path.parents:
            return
        path.unlink(missing_ok=True)
        if path.parent != cache and not any(path.parent.iterdir()):
            path.parent.rmdir()
    except OSError:
        logger.warning("could not remove the uploaded copy %s", path, exc_info=True)
