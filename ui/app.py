"""The Gradio page: chat (streamed, multi-turn, optional RAG with sources), knowledge bases, uploads.

This module lays the page out and wires it to its handlers (ui/events.py), which reach the model
only through `ui.client` (HTTP), so the page runs mounted in xiaophi-serve or alone.
Import `ui` (not gradio) first: the package switches gradio's analytics off before it loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ui.events import PageEvents

DEFAULT_SYSTEM_PROMPT = "你是小Phi，一个乐于助人的中文助手。"

# Page text the browser test also looks for.
LABELS = {
    "send": "发送",
    "stop": "停止",
    "new_chat": "新对话",
    "refresh": "刷新列表",
    "create_kb": "创建知识库",
    "upload": "上传到知识库",
    "use_tools": "使用工具",
}


@dataclass
class ChatPanel:
    chatbot: gr.Chatbot
    textbox: gr.Textbox
    send: gr.Button
    stop: gr.Button
    new_chat: gr.Button
    use_tools: gr.Checkbox


@dataclass
class KBPanel:
    picker: gr.Dropdown
    refresh: gr.Button
    new_name: gr.Textbox
    create: gr.Button
    files: gr.File
    upload: gr.Button
    upload_result: gr.Markdown
    documents: gr.Markdown


@dataclass
class GenerationPanel:
    system_prompt: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_tokens: gr.Slider


def chat_panel() -> ChatPanel:
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
            placeholder="输入消息，按回车发送", show_label=False, scale=5, elem_id="chat-input"
        )
        send = gr.Button(LABELS["send"], variant="primary", scale=1, elem_id="send")
    with gr.Row():
        stop = gr.Button(LABELS["stop"], size="sm", elem_id="stop")
        new_chat = gr.Button(LABELS["new_chat"], size="sm", elem_id="new-chat")
        use_tools = gr.Checkbox(
            label=LABELS["use_tools"],
            value=False,
            elem_id="use-tools",
            info="让模型查词典（成语、词语、歇后语）并搜索所选知识库；每次调用显示在回答上方",
        )
    return ChatPanel(chatbot, textbox, send, stop, new_chat, use_tools)


def kb_panel() -> KBPanel:
    with gr.Accordion("知识库", open=True):
        with gr.Row():
            picker = gr.Dropdown(
                choices=[],
                value=[],
                multiselect=True,
                label="回答时使用的知识库（可多选；不选则不使用）",
                info="选了几个，回答就从几个知识库里检索；上传文件时只选一个",
                scale=3,
                elem_id="kb-picker",
            )
            refresh = gr.Button(LABELS["refresh"], size="sm", scale=1, elem_id="refresh")
        with gr.Row():
            new_name = gr.Textbox(
                label="新知识库名称", placeholder="例如：公司手册", scale=3, elem_id="new-kb"
            )
            create = gr.Button(LABELS["create_kb"], size="sm", scale=1, elem_id="create-kb")
        files = gr.File(
            label="上传文件到所选知识库（txt、md、pdf、docx、html、csv、json，可多选）",
            file_count="multiple",
            type="filepath",
            elem_id="files",
        )
        upload = gr.Button(LABELS["upload"], elem_id="upload")
        upload_result = gr.Markdown(elem_id="upload-result")
        documents = gr.Markdown(elem_id="documents")
    return KBPanel(picker, refresh, new_name, create, files, upload, upload_result, documents)


def generation_panel() -> GenerationPanel:
    with gr.Accordion("生成设置", open=False):
        system_prompt = gr.Textbox(
            value=DEFAULT_SYSTEM_PROMPT, label="系统提示词（system prompt）", lines=2
        )
        temperature = gr.Slider(
            0.0, 2.0, value=0.7, step=0.05, label="temperature（0 = 贪心）", elem_id="temperature"
        )
        top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="top-p")
        max_tokens = gr.Slider(
            16, 2048, value=256, step=16, label="max tokens（回答最长 token 数）"
        )
    return GenerationPanel(system_prompt, temperature, top_p, max_tokens)


def connection_panel(api_url: str, key_field: bool, logout_url: str | None) -> Any:
    """The API address, a key field when the page has no login, a logout button when it has;
    returns what holds the page's key (a textbox, or an always-empty state)."""
    with gr.Accordion("连接", open=False):
        gr.Markdown(f"API 地址：`{api_url}`")
        if key_field:
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
    return page_key


def wire_chat(events: PageEvents, chat: ChatPanel, gen: GenerationPanel, kb: KBPanel, page_key):
    inputs = [
        chat.textbox,
        chat.chatbot,
        gen.system_prompt,
        gen.temperature,
        gen.top_p,
        gen.max_tokens,
        kb.picker,
        chat.use_tools,
        page_key,
    ]
    outputs = [chat.chatbot, chat.textbox, chat.send]
    # Answers wait on the API, not on this process: let many stream at once (the server
    # batches them); gradio's default would queue every user behind one answer.
    submitted = chat.textbox.submit(events.on_chat, inputs, outputs, concurrency_limit=32)
    clicked = chat.send.click(events.on_chat, inputs, outputs, concurrency_limit=32)
    # a stopped answer never reaches its last yield: give the send button back here
    chat.stop.click(
        lambda: gr.update(interactive=True), None, chat.send, cancels=[submitted, clicked]
    )
    chat.new_chat.click(
        lambda: ([], "", gr.update(interactive=True)),
        None,
        outputs,
        cancels=[submitted, clicked],
    )


def wire_kb(events: PageEvents, kb: KBPanel, page_key, status: gr.Markdown) -> None:
    kb.refresh.click(
        events.kb_picker, [page_key, kb.picker], [kb.picker, status], api_name="on_refresh"
    )
    kb.create.click(events.on_create, [page_key, kb.new_name], [kb.picker, status, kb.new_name])
    kb.picker.change(events.documents_of, [page_key, kb.picker], kb.documents)
    kb.upload.click(
        events.on_upload,
        [page_key, kb.picker, kb.files],
        [kb.upload_result, kb.documents, kb.files],
        concurrency_limit=4,
    )


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
    events = PageEvents(api_url, api_key, default_kb, request_key)
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
                chat = chat_panel()
            with gr.Column(scale=2):
                kb = kb_panel()
                gen = generation_panel()
                page_key = connection_panel(api_url, request_key is None, logout_url)
                status = gr.Markdown(elem_id="status")
        wire_chat(events, chat, gen, kb, page_key)
        wire_kb(events, kb, page_key, status)
        demo.load(events.on_load, [page_key], [kb.picker, status])
    return demo
