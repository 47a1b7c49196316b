"""Take the README's screenshot: drive the page in headless Chromium through a RAG answer.

    python -m tools.screenshot --url http://127.0.0.1:8000/ui/ --kb 三国演义 \\
        --file data/demo/kb_docs/三国演义_第二回_gbk.txt --question "董卓是谁？" --out docs/ui.png

Needs the `playwright` package (dev extra) and a Chromium binary (Debian: `apt-get install
chromium`); no browser is downloaded. The browser test in tests/ui uses the same launcher.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
# Headless, and quiet: no first-run pages, no background or update traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000


# A new status message, and gradio's progress indicator for it gone.
STATUS_CHANGED = """before => {
  const status = document.querySelector('#status');
  const tracker = status.querySelector('[data-testid="status-tracker"]');
  return status.innerText !== before && (!tracker || tracker.classList.contains('hide'));
}"""

# The send button is disabled from the first update of an answer to its last. Watching the
# attribute (not polling it) also catches an answer that comes and goes between two polls.
WATCH_SEND = """() => {
  window.xiaophiBusySeen = false;
  const send = document.querySelector('#send');
  window.xiaophiSendWatch?.disconnect();
  window.xiaophiSendWatch = new MutationObserver(() => {
    if (send.disabled) window.xiaophiBusySeen = true;
  });
  window.xiaophiSendWatch.observe(send, {attributes: true, attributeFilter: ['disabled']});
}"""

ANSWERED = """asked => {
  const questions = document.querySelectorAll('#chatbot [data-testid="user"]').length;
  return window.xiaophiBusySeen && questions > asked && !document.querySelector('#send').disabled;
}"""

SOURCES_SHOWN = """() => document.querySelector('#chatbot').innerText.includes('参考来源') &&
  [...document.querySelectorAll('#chatbot .thought-group')]
    .some(group => group.getBoundingClientRect().height > 80)"""


@contextlib.contextmanager
def chromium(
    executable: str = CHROMIUM, profile: str | Path | None = None, timeout_ms: int = TIMEOUT_MS
) -> Iterator[Any]:
    """A Playwright browser context on a local Chromium with a fresh profile (Chinese locale)."""
    from playwright.sync_api import sync_playwright

    with contextlib.ExitStack() as stack:
        if profile is None:
            profile = stack.enter_context(tempfile.TemporaryDirectory(prefix="xiaophi-chromium-"))
        playwright = stack.enter_context(sync_playwright())
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            locale="zh-CN",
            viewport={"width": 1400, "height": 1000},
        )
        stack.callback(context.close)
        context.set_default_timeout(timeout_ms)
        yield context


def ask(page: Any, question: str) -> None:
    """Send `question` and wait until its answer has finished streaming."""
    asked = page.locator('#chatbot [data-testid="user"]').count()
    page.evaluate(WATCH_SEND)
    page.fill("#chat-input textarea", question)
    page.press("#chat-input textarea", "Enter")
    page.wait_for_function(ANSWERED, arg=asked)


def wait_for_sources(page: Any) -> None:
    """Wait until sources are shown under an answer, unfolded (the list opens after it arrives)."""
    page.wait_for_function(SOURCES_SHOWN)


def rag_walkthrough(page: Any, url: str, kb: str, files: list[Path], question: str) -> None:
    """Open the page, create `kb`, upload `files`, ask `question`; wait for the sources."""
    page.goto(url)
    page.wait_for_selector("#chat-input textarea")
    page.locator("#status").get_by_text("已刷新").wait_for()
    status = page.locator("#status")
    before = status.inner_text()
    page.fill("#new-kb textarea", kb)
    page.click("#create-kb")
    page.wait_for_function(STATUS_CHANGED, arg=before)
    if "已创建" not in status.inner_text():
        raise SystemExit(f"could not create the knowledge base: {status.inner_text()}")
    page.set_input_files("#files input[type=file]", [str(f) for f in files])
    for file in files:  # each shown once it reached the page (the name and suffix may split)
        page.locator("#files").get_by_text(file.stem).first.wait_for()
    page.click("#upload")
    page.locator("#upload-result").get_by_text("上传完成").wait_for()
    ask(page, question)
    wait_for_sources(page)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.screenshot", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000/ui/", help="the page")
    parser.add_argument("--kb", required=True, help="name of a new knowledge base")
    parser.add_argument(
        "--file", action="append", required=True, type=Path, help="file to upload (repeatable)"
    )
    parser.add_argument("--question", required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/ui.png"))
    parser.add_argument("--chromium", default=CHROMIUM, help="Chromium binary")
    args = parser.parse_args(argv)
    with chromium(args.chromium) as context:
        page = context.new_page()
        rag_walkthrough(page, args.url, args.kb, args.file, args.question)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=True)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
