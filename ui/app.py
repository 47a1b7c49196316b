"""The Gradio page: chat (streamed, multi-turn, optional RAG with sources), knowledge bases, uploads.

It reaches the model only through `ui.client` (HTTP), so it runs mounted in xiaophi-serve or alone.
Import `ui` (not gradio) first: the package switches gradio's analytics off before it loads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from ui.client import ChatSettings, Source, UIError, UploadResult, XiaophiClient

logger = logging.getLogger(__name__)

NO_KB = ""  # the picker's value for "no knowledge base"
NO_KB_LABEL = "无（不使用知识库）"
SOURCES_TITLE = "参考来源"
ERROR_TITLE = "出错了"
DEFAULT_SYSTEM_PROMPT = "你是小Phi，一个乐于助人的中文助手。"
SNIPPET_CHARS = 120

# Page text the browser test also looks for.
LABELS = {
    "send": "发送",
    "stop": "停止",
    "new_chat": "新对话",
    "refresh": "刷新列表",
    "create_kb": "创建知识库",
    "upload": "上传到知识库",
}


def _readable(exc: BaseException) -> str:
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
    for rank, source in enumerate(sources, 1):
        where = [f"**{source.filename}**"]
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


def _error_note(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text, "metadata": {"title": ERROR_TITLE}}


def build_ui(
    api_url: str,
    api_key: str | None = None,
    default_kb: str | None = None,
    request_key: Callable[[gr.Request | None], str | None] | None = None,
    logout_url: str | None = None,
) -> gr.Blocks:
    """The page, talking to the xiaophi server at `api_url`.

    Its key: `request_key(request)` for each event when given (mounted in xiaophi-serve: the key
    the user logged in with), else the one typed into the page, else `api_key`. The page opens
    with `default_kb` selected if that knowledge base exists; `logout_url` adds a logout button.
    """

    def client_for(page_key: str, request: gr.Request | None) -> XiaophiClient:
        if request_key is not None:
            return XiaophiClient(api_url, request_key(request))
        return XiaophiClient(api_url, (page_key or "").strip() or api_key)

    def kb_choices(page_key: str, selected: str, request: gr.Request | None) -> tuple[Any, str]:
        """Picker update and a status line; the picker keeps "none" when the API fails."""
        try:
            with client_for(page_key, request) as client:
                names = [kb["name"] for kb in client.list_knowledge_bases()]
        except Exception as exc:
            return gr.update(choices=[(NO_KB_LABEL, NO_KB)], value=NO_KB), _readable(exc)
        value = selected if selected in names else NO_KB
        choices = [(NO_KB_LABEL, NO_KB)] + [(name, name) for name in names]
        return gr.update(choices=choices, value=value), f"已刷新：{len(names)} 个知识库。"

    def documents_of(page_key: str, kb: str, request: gr.Request) -> str:
        if not kb:
            return ""
        try:
            with client_for(page_key, request) as client:
                return format_documents(kb, client.list_documents(kb))
        except Exception as exc:
            return _readable(exc)

    def on_load(page_key: str, request: gr.Request):
        return kb_choices(page_key, default_kb or NO_KB, request)

    def on_refresh(page_key: str, selected: str, request: gr.Request):
        return kb_choices(page_key, selected, request)

    def on_create(page_key: str, name: str, request: gr.Request):
        try:
            with client_for(page_key, request) as client:
                created = client.create_knowledge_base(name)
        except Exception as exc:
            return gr.update(), _readable(exc), gr.update()
        created_name = created.get("name", name.strip())
        picker, _ = kb_choices(page_key, created_name, request)
        return picker, f"已创建知识库 **{created_name}**。", ""

    def on_upload(
        page_key: str,
        kb: str,
        files: list[str] | None,
        request: gr.Request,
        progress=gr.Progress(),  # noqa: B008
    ):
        paths = [Path(f) for f in files or []]
        if not kb:
            return "请先在上方选择一个知识库（不能是「无」）。", gr.update(), gr.update()
        if not paths:
            return "请先选择要上传的文件。", gr.update(), gr.update()
        results: list[UploadResult] = []
        try:
            with client_for(page_key, request) as client:
                # One file per request, so the progress bar moves as each is parsed and embedded.
                for i, path in enumerate(paths):
                    progress((i, len(paths)), desc=f"正在处理 {path.name}（{i + 1}/{len(paths)}）")
                    results.extend(client.upload_documents(kb, [path]))
                progress((len(paths), len(paths)), desc="完成")
                listing = format_documents(kb, client.list_documents(kb))
        except Exception as exc:
            done = format_upload_results(results)
            text = "\n\n".join(part for part in (done, _readable(exc)) if part)
            return text, gr.update(), gr.update()
        # The knowledge base has the files now: gradio's copies go, and the picker empties.
        for path in paths:
            _forget_upload(path)
        added = sum(r.status == "added" for r in results)
        summary = f"上传完成：{added}/{len(results)} 个文件已添加到 **{kb}**。"
        return summary + "\n\n" + format_upload_results(results), listing, None

    def on_chat(
        message: str,
        history: list[dict[str, Any]],
        system_prompt: str,
        temperature: float,
        top_p: float,
        max_tokens: float,
        kb: str,
        page_key: str,
        request: gr.Request,
    ) -> Iterator[tuple[list[dict[str, Any]], str, Any]]:
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
            knowledge_base=kb or None,
        )
        try:
            with client_for(page_key, request) as client:
                for event in client.stream_chat(conversation, settings):
                    if isinstance(event, str):
                        answer["content"] += event
                    else:
                        history.append(
                            {
                                "role": "assistant",
                                "content": format_sources(event),
                                "metadata": {"title": f"{SOURCES_TITLE}（{len(event)}）"},
                            }
                        )
                    yield history, "", gr.update()
            if not answer["content"]:
                answer["content"] = "（模型没有生成任何文字）"
        except Exception as exc:
            if not answer["content"]:
                history.remove(answer)
            history.append(_error_note(_readable(exc)))
        yield history, "", gr.update(interactive=True)

    # Files the page receives are gradio's copies on their way to a knowledge base: sent ones
    # are deleted at once (on_upload), any left behind after an hour.
    with gr.Blocks(
        title="小Phi · xiaophi", analytics_enabled=False, delete_cache=(3600, 3600)
    ) as demo:
        gr.Markdown(
            "## 小Phi · xiaophi\n从零训练的中文小模型。可直接聊天，也可以选择知识库，"
            "让回答依据你上传的文档（RAG），并在回答下方列出来源。"
        )
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    label="对话",
                    height=560,
                    elem_id="chatbot",
                    feedback_options=None,
                    buttons=["copy"],
                    placeholder="你好！请在下方输入问题。",
                )
                with gr.Row():
                    textbox = gr.Textbox(
                        placeholder="输入消息，按回车发送",
                        show_label=False,
                        scale=5,
                        elem_id="chat-input",
                    )
                    send = gr.Button(LABELS["send"], variant="primary", scale=1, elem_id="send")
                with gr.Row():
                    stop = gr.Button(LABELS["stop"], size="sm", elem_id="stop")
                    new_chat = gr.Button(LABELS["new_chat"], size="sm", elem_id="new-chat")
            with gr.Column(scale=2):
                with gr.Accordion("知识库", open=True):
                    with gr.Row():
                        kb_picker = gr.Dropdown(
                            choices=[(NO_KB_LABEL, NO_KB)],
                            value=NO_KB,
                            label="回答时使用的知识库",
                            scale=3,
                            elem_id="kb-picker",
                        )
                        refresh = gr.Button(
                            LABELS["refresh"], size="sm", scale=1, elem_id="refresh"
                        )
                    with gr.Row():
                        new_kb_name = gr.Textbox(
                            label="新知识库名称",
                            placeholder="例如：公司手册",
                            scale=3,
                            elem_id="new-kb",
                        )
                        create = gr.Button(
                            LABELS["create_kb"], size="sm", scale=1, elem_id="create-kb"
                        )
                    files = gr.File(
                        label="上传文件到所选知识库（txt、md、pdf、docx、html、csv、json，可多选）",
                        file_count="multiple",
                        type="filepath",
                        elem_id="files",
                    )
                    upload = gr.Button(LABELS["upload"], elem_id="upload")
                    upload_result = gr.Markdown(elem_id="upload-result")
                    documents = gr.Markdown(elem_id="documents")
                with gr.Accordion("生成设置", open=False):
                    system_prompt = gr.Textbox(
                        value=DEFAULT_SYSTEM_PROMPT, label="系统提示词（system prompt）", lines=2
                    )
                    temperature = gr.Slider(
                        0.0, 2.0, value=0.7, step=0.05, label="temperature（0 = 贪心）"
                    )
                    top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="top-p")
                    max_tokens = gr.Slider(
                        16, 2048, value=256, step=16, label="max tokens（回答最长 token 数）"
                    )
                with gr.Accordion("连接", open=False):
                    gr.Markdown(f"API 地址：`{api_url}`")
                    if request_key is None:
                        page_key = gr.Textbox(
                            label="API key（服务器要求时填写）",
                            type="password",
                            placeholder="留空则使用启动时给的 key",
                            elem_id="api-key",
                        )
                    else:  # the key is the one the user logged in with
                        page_key = gr.State("")
                    if logout_url:
                        gr.Button("退出登录", link=logout_url, size="sm", elem_id="logout")
                status = gr.Markdown(elem_id="status")

        chat_inputs = [
            textbox,
            chatbot,
            system_prompt,
            temperature,
            top_p,
            max_tokens,
            kb_picker,
            page_key,
        ]
        chat_outputs = [chatbot, textbox, send]
        # Answers wait on the API, not on this process: let many stream at once (the server
        # batches them); gradio's default would queue every user behind one answer.
        submitted = textbox.submit(on_chat, chat_inputs, chat_outputs, concurrency_limit=32)
        clicked = send.click(on_chat, chat_inputs, chat_outputs, concurrency_limit=32)
        # a stopped answer never reaches its last yield: give the send button back here
        stop.click(lambda: gr.update(interactive=True), None, send, cancels=[submitted, clicked])
        new_chat.click(
            lambda: ([], "", gr.update(interactive=True)),
            None,
            chat_outputs,
            cancels=[submitted, clicked],
        )

        refresh.click(on_refresh, [page_key, kb_picker], [kb_picker, status])
        create.click(on_create, [page_key, new_kb_name], [kb_picker, status, new_kb_name])
        kb_picker.change(documents_of, [page_key, kb_picker], documents)
        upload.click(
            on_upload,
            [page_key, kb_picker, files],
            [upload_result, documents, files],
            concurrency_limit=4,
        )
        demo.load(on_load, [page_key], [kb_picker, status])
    return demo


def _forget_upload(path: Path) -> None:
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
