"""The client half of `make docker-smoke`: talk to the compose `api` service like a user would.

Runs on the host against the published port: the official openai client for chat (plain,
streamed, and grounded in a knowledge base), httpx for the knowledge-base routes. Exits non-zero
with a message on the first thing that is wrong.

    python docker/smoke_client.py --url http://127.0.0.1:18000 [--api-key KEY]
"""

from __future__ import annotations

import argparse
import sys
import time

import httpx
from openai import OpenAI

KB = "smoke"
# A short document the model has never seen: a made-up fact under a made-up name, in GBK, as
# Chinese users often upload it. Asking about the name must retrieve this file.
DOC_NAME = "海棠镇档案_gbk.txt"
DOC_TEXT = (
    "海棠镇档案\n\n"
    "海棠镇位于青溪河东岸，镇上最有名的是一座九孔石桥，名叫望月桥。\n"
    "望月桥建于明朝万历年间，由石匠柳三娘主持修建，桥长四十二丈。\n"
    "每年中秋，镇上的人会在望月桥上点灯，叫作“桥灯会”。\n"
)
QUESTION = "望月桥是谁主持修建的？"


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"smoke client: FAILED: {message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--kb-backend", default="local", help="the KB backend /health must report")
    args = parser.parse_args()
    url = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"}
    client = OpenAI(base_url=f"{url}/v1", api_key=args.api_key, timeout=120, max_retries=0)
    http = httpx.Client(base_url=url, headers=headers, timeout=300)
    kbs = http.get("/health").json().get("knowledge_bases", {})
    check(
        kbs == {"backend": args.kb_backend, "status": "ok"},
        f"/health says the knowledge bases are {kbs}, not {args.kb_backend} and ok",
    )

    model = client.models.list().data[0].id
    print(f"smoke client: model {model!r}")

    started = time.time()
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "“画蛇添足”是什么意思？"}],
        max_tokens=48,
        temperature=0,
    )
    text = answer.choices[0].message.content or ""
    check(text.strip() != "", "the chat answer is empty")
    check(answer.usage is not None and answer.usage.completion_tokens > 0, "no usage")
    print(f"smoke client: chat in {time.time() - started:.1f}s: {text[:60]!r}")

    started = time.time()
    pieces = []
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "你好，请介绍一下你自己。"}],
        max_tokens=32,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    check(len(pieces) > 1, f"the stream brought {len(pieces)} content chunks")
    print(f"smoke client: stream of {len(pieces)} chunks in {time.time() - started:.1f}s")

    page = http.get("/ui/")
    check(
        page.status_code == 200 and "gradio" in page.text.lower(), f"/ui/: HTTP {page.status_code}"
    )
    print("smoke client: the UI answers at /ui/")

    kbs = http.get("/v1/knowledge_bases").raise_for_status().json()["data"]
    names = [kb["name"] for kb in kbs]
    check("demo" in names, f"the trainer's demo knowledge base is missing (have {names})")
    print(f"smoke client: knowledge bases {names}")

    if KB not in names:
        http.post("/v1/knowledge_bases", json={"name": KB}).raise_for_status()
    started = time.time()
    response = http.post(
        f"/v1/knowledge_bases/{KB}/documents",
        files=[("files", (DOC_NAME, DOC_TEXT.encode("gbk"), "text/plain"))],
    )
    check(response.status_code == 200, f"upload: HTTP {response.status_code}: {response.text}")
    results = response.json()["results"]
    check(
        len(results) == 1 and results[0]["status"] in ("added", "duplicate"),
        f"upload results: {results}",
    )
    print(f"smoke client: uploaded {DOC_NAME} in {time.time() - started:.1f}s: {results[0]}")

    started = time.time()
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=48,
        temperature=0,
        extra_body={"knowledge_base": KB},
    )
    sources = (answer.model_extra or {}).get("sources")
    check(bool(sources), f"the RAG answer carries no sources: {answer.model_extra}")
    filenames = [s["filename"] for s in sources]
    check(DOC_NAME in filenames, f"the uploaded document is not among the sources {filenames}")
    check("柳三娘" in "".join(s["snippet"] for s in sources), "the snippet lacks the fact")
    print(
        f"smoke client: RAG answer in {time.time() - started:.1f}s from {filenames}: "
        f"{(answer.choices[0].message.content or '')[:60]!r}"
    )
    print("smoke client: OK")


if __name__ == "__main__":
    try:
        main()
    except (httpx.HTTPError, Exception) as error:  # noqa: BLE001 - any failure ends the smoke test
        if isinstance(error, SystemExit):
            raise
        print(f"smoke client: FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
