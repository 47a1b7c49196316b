"""Small HTTP helpers for the knowledge-base tests (create, upload, search, state)."""

from __future__ import annotations

import uuid

import httpx

FILLER = [
    (f"filler{i}.txt", f"第{i}段无关的内容：今天天气很好，我们去公园散步。".encode())
    for i in range(4)
]


def new_kb(server, name: str | None = None) -> str:
    name = name or f"kb-{uuid.uuid4().hex[:8]}"
    response = httpx.post(f"{server.base_url}/knowledge_bases", json={"name": name})
    assert response.status_code == 201, response.text
    return name


def upload(server, kb: str, *files: tuple[str, bytes]) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/knowledge_bases/{kb}/documents",
        files=[("files", (name, data)) for name, data in files],
        timeout=60,
    )


def search(server, kb: str, query: str, top_k: int | None = None) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/knowledge_bases/{kb}/search",
        json={"query": query, "top_k": top_k},
        timeout=60,
    )


def kb_state(server, kb: str) -> tuple[dict, list]:
    info = httpx.get(f"{server.base_url}/knowledge_bases/{kb}").json()
    docs = httpx.get(f"{server.base_url}/knowledge_bases/{kb}/documents").json()["data"]
    return info, docs
