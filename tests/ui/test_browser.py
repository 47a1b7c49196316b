"""The page in a real headless Chromium (Debian's, driven by Playwright): chat, KB, upload, RAG.

Set XIAOPHI_UI_SCREENSHOT=docs/ui.png to keep a screenshot of the page after the RAG answer.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from gradio.utils import get_upload_folder

from tests.serving.conftest import serve
from tools import screenshot

CHROMIUM = os.environ.get("XIAOPHI_CHROMIUM", screenshot.CHROMIUM)

pytestmark = pytest.mark.slow

# Records every length the last answer's text had, so the test can tell a stream from a jump.
WATCH_ANSWER = """() => {
  window.answerLengths = [];
  const chat = document.querySelector('#chatbot');
  new MutationObserver(() => {
    const bots = chat.querySelectorAll('[data-testid="bot"]');
    if (bots.length) window.answerLengths.push(bots[bots.length - 1].innerText.length);
  }).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


def picked_kbs(page) -> list[str]:
    """The knowledge bases the picker has selected (its tokens)."""
    return page.locator("#kb-picker .token > span").all_inner_texts()


def pick_kb(page, name: str) -> None:
    """Add `name` to the picker's selection, as a user does: open the list, click it."""
    page.click("#kb-picker input")
    page.get_by_role("option", name=name).click()
    page.keyboard.press("Escape")
    page.wait_for_function(
        "n => [...document.querySelectorAll('#kb-picker .token > span')]"
        ".some(e => e.innerText === n)",
        arg=name,
    )


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does)")
    with screenshot.chromium(CHROMIUM, tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture
def page(browser):
    page = browser.new_page()
    outside: list[str] = []
    page.on(
        "request",
        lambda r: (
            None
            if r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
            else outside.append(r.url)
        ),
    )
    yield page
    page.close()
    assert not outside, f"the page made outbound requests: {outside}"


def test_chat_kb_upload_and_rag_sources_in_the_browser(ui_server, page, gbk_file, tmp_path):
    page.goto(f"{ui_server.url}/ui/")
    page.wait_for_selector("#chat-input textarea")
    page.get_by_text("已刷新：0 个知识库").wait_for()

    # 1. a plain chat answer streams in
    page.evaluate(WATCH_ANSWER)
    screenshot.ask(page, "你好")
    answer = page.locator('#chatbot [data-testid="bot"]').last.inner_text()
    assert len(answer) > 20
    lengths = page.evaluate("window.answerLengths")
    partial = {n for n in lengths if 0 < n < len(answer)}
    assert len(partial) >= 2, f"the answer did not stream: lengths seen {lengths}"

    # a new conversation empties the chat (and the random model's long first answer no longer
    # takes the context the retrieved passages need below)
    page.click("#new-chat")
    page.wait_for_function("""() => !document.querySelector('#chatbot [data-testid="bot"]')""")

    # 2. create a knowledge base; the picker selects it
    page.fill("#new-kb textarea", "成语库")
    page.click("#create-kb")
    page.locator("#status").get_by_text("已创建知识库").wait_for()
    assert picked_kbs(page) == ["成语库"]

    # 3. upload a GBK text file and see it listed
    started = time.time() - 1
    page.set_input_files("#files input[type=file]", str(gbk_file))
    page.locator("#files").get_by_text(gbk_file.stem).first.wait_for()  # name, suffix may split
    page.click("#upload")
    page.locator("#upload-result").get_by_text("上传完成：1/1 个文件已添加").wait_for()
    assert gbk_file.name in page.inner_text("#upload-result")
    listing = page.inner_text("#documents")
    assert gbk_file.name in listing and "gb" in listing.lower()
    # the knowledge base has it: gradio's copy of the upload is gone from the server's disk
    copies = Path(get_upload_folder()).rglob(gbk_file.name)
    assert not [p for p in copies if p.stat().st_mtime >= started], "gradio kept the upload"

    # 4. ask about it: the answer comes with its sources underneath
    screenshot.ask(page, "守株待兔是什么意思？")
    # the send button can come back a moment before the chatbot has drawn the sources message
    screenshot.wait_for_sources(page)
    chat_text = page.inner_text("#chatbot")
    assert "参考来源" in chat_text, chat_text
    answer_and_sources = chat_text[chat_text.index("守株待兔是什么意思？") + 10 :]
    sources = answer_and_sources[answer_and_sources.index("参考来源") :]
    assert gbk_file.name in sources and "score" in sources and "守株待兔" in sources

    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    if target := os.environ.get("XIAOPHI_UI_SCREENSHOT"):
        shutil.copyfile(shot, target)

    # 5. a second knowledge base, picked beside the first: the answer draws on both
    page.fill("#new-kb textarea", "俗语库")
    page.click("#create-kb")
    page.locator("#status").get_by_text("已创建知识库 俗语库").wait_for()
    assert picked_kbs(page) == ["俗语库"]  # the new one alone, ready for its upload
    saying = tmp_path / "俗语.txt"
    saying.write_text("守株待兔的农夫又等了一年，兔子再也没有来过。", encoding="utf-8")
    page.set_input_files("#files input[type=file]", str(saying))
    page.locator("#files").get_by_text(saying.stem).first.wait_for()
    pick_kb(page, "成语库")
    assert sorted(picked_kbs(page)) == ["俗语库", "成语库"]
    page.click("#upload")  # with two picked, an upload does not guess where to go
    page.locator("#upload-result").get_by_text("上传时请只选一个知识库").wait_for()
    page.locator("#kb-picker .token").filter(has_text="成语库").locator(".token-remove").click()
    page.click("#upload")
    page.locator("#upload-result").get_by_text("已添加到 俗语库").wait_for()
    pick_kb(page, "成语库")
    page.locator("#documents").get_by_text("知识库 成语库").wait_for()  # both listed
    listing = page.inner_text("#documents")
    assert "知识库 俗语库" in listing and saying.name in listing and gbk_file.name in listing

    page.click("#new-chat")
    page.wait_for_function("""() => !document.querySelector('#chatbot [data-testid="bot"]')""")
    screenshot.ask(page, "守株待兔是什么意思？")
    screenshot.wait_for_sources(page)
    chat_text = page.inner_text("#chatbot")
    sources = chat_text[chat_text.index("参考来源") :]
    assert f"成语库 / {gbk_file.name}" in sources and f"俗语库 / {saying.name}" in sources


def test_use_tools_runs_the_models_calls_and_shows_them_folded(tools_ui_server, page, tool_terms):
    """ "使用工具" on: the model asks the dictionary, the page runs the call through the server,
    shows the call and its result folded above the answer, and the answer taken from it."""
    from tests.tool_model import IDIOMS, QUESTION, lookup_idiom

    term = tool_terms[0]
    page.goto(f"{tools_ui_server.url}/ui/")
    page.wait_for_selector("#chat-input textarea")
    page.get_by_text("已刷新：0 个知识库").wait_for()
    page.get_by_label("使用工具").check()
    page.get_by_text("生成设置").click()
    page.fill("#temperature input[type=number]", "0")
    page.press("#temperature input[type=number]", "Enter")
    screenshot.ask(page, QUESTION.format(w=term))
    bots = page.locator('#chatbot [data-testid="bot"]')
    assert bots.last.inner_text().strip() == IDIOMS[term]
    chat = page.locator("#chatbot")
    title = chat.get_by_text("调用工具：lookup_idiom")
    title.wait_for()
    assert lookup_idiom(term) not in chat.inner_text()  # folded
    title.click()
    chat.get_by_text(lookup_idiom(term)).wait_for()
    # the call's arguments, as the model wrote them
    assert json.dumps({"term": term}, ensure_ascii=False) in chat.inner_text()


@pytest.fixture
def page_without_api(dead_url) -> Iterator[str]:
    """The stand-alone page pointed at an address where no API listens."""
    from serving.api.page import mount

    with serve(mount(FastAPI(), dead_url)) as url:
        yield f"{url}/ui/"


def test_api_down_shows_a_readable_message(page_without_api, page):
    page.goto(page_without_api)
    page.locator("#status").get_by_text("无法连接到 API 服务器").wait_for()
    screenshot.ask(page, "你好")
    assert "无法连接到 API 服务器" in page.inner_text("#chatbot")
    assert "Traceback" not in page.inner_text("body")
    page.click("#upload")
    page.locator("#upload-result").get_by_text("请先在上方选择一个知识库").wait_for()


def log_in(page, url: str, key: str) -> None:
    """Open the page, meet the login form (a 401), give `key`."""
    response = page.goto(f"{url}/ui/")
    assert response.status == 401
    page.fill("#login-key", key)
    page.click("#login")


def calls_since(recorder, start: int, timeout: float = 30) -> list[tuple[str, str]]:
    """The API calls recorded after the first `start`, once there are some."""
    deadline = time.monotonic() + timeout
    while len(recorder.calls) <= start and time.monotonic() < deadline:
        time.sleep(0.05)
    return recorder.calls[start:]


def test_login_once_and_the_page_calls_the_api_with_that_key(keyed_ui_server, page):
    url, recorder = keyed_ui_server.server.url, keyed_ui_server.recorder
    alpha, beta = keyed_ui_server.keys

    # a wrong key is refused on the form, and nothing reaches the API
    start = len(recorder.calls)
    log_in(page, url, "not-a-key")
    page.locator("#login-note").get_by_text("不正确").wait_for()
    assert recorder.calls[start:] == []

    # the right one opens the page, on the default knowledge base
    log_in(page, url, alpha)
    page.wait_for_selector("#chat-input textarea")
    page.locator("#status").get_by_text("已刷新：1 个知识库").wait_for()
    assert picked_kbs(page) == [keyed_ui_server.default_kb]
    page.locator("#documents").get_by_text("还没有文档").wait_for()
    assert not page.locator("#api-key").count()  # no key field: the login is the key
    screenshot.ask(page, "你好")
    calls = recorder.calls[start:]
    paths = {path for path, _ in calls}
    assert {"/v1/knowledge_bases", "/v1/models", "/v1/chat/completions"} <= paths
    assert "/v1/knowledge_bases/demo/documents" in paths
    assert {auth for _, auth in calls} == {f"Bearer {alpha}"}

    # meanwhile another user logs in with the other key (over HTTP, through gradio's own API
    # as a second browser would): each session's events send its own user's key
    with httpx.Client(base_url=url, timeout=60) as other:
        assert other.post("/ui/login", data={"key": beta}).status_code == 303
        start = len(recorder.calls)
        event = other.post("/ui/gradio_api/call/on_refresh", json={"data": [[]]})
        result = other.get(f"/ui/gradio_api/call/on_refresh/{event.json()['event_id']}")
        assert "event: complete" in result.text and "demo" in result.text
        assert {auth for _, auth in recorder.calls[start:]} == {f"Bearer {beta}"}
    start = len(recorder.calls)
    page.click("#refresh")
    assert {auth for _, auth in calls_since(recorder, start)} == {f"Bearer {alpha}"}

    # logging out ends the session: the login form again
    page.get_by_text("连接", exact=True).click()
    page.click("#logout")
    page.wait_for_selector("#login-key")
    assert page.url.rstrip("/").endswith("/ui")
