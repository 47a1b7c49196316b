"""The soak's clients (bench/soak.py): streamed chat where some clients hang up mid-answer, RAG
chat, and document uploads and deletes; every request is counted ok, failed-retryable or failed.

Retryable is what a well-behaved client retries: a 429 or 503 status, or an in-stream error
event of type `service_unavailable_error` (the engine restarting). Anything else — another
status, a dropped connection, a timeout, a stream without `data: [DONE]` — is a failure. After a
retryable answer a client waits as `Retry-After` says (at most 2 s), as a real one would.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, deque
from dataclasses import dataclass, field

import httpx

from bench.bench_model import BENCH_TEXTS

RETRYABLE_STATUS = (429, 503)
KINDS = ("chat stream", "rag chat", "upload", "delete")


@dataclass
class Tally:
    ok: Counter = field(default_factory=Counter)
    retryable: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    hung_up: int = 0  # streams the client left on purpose (counted ok)
    failures: list[str] = field(default_factory=list)  # the first few, for the report

    def count(self, kind: str, outcome: str, detail: str = "") -> None:
        getattr(self, outcome)[kind] += 1
        if outcome == "failed" and len(self.failures) < 10:
            self.failures.append(f"{kind}: {detail}"[:300])


@dataclass
class Documents:
    """What the uploads and deletes were told: the documents that must be there at the end."""

    added: dict[str, str] = field(default_factory=dict)  # id → its marker word
    deleted: set[str] = field(default_factory=set)
    pending_deletes: deque[str] = field(default_factory=deque)
    tried_deleting: set[str] = field(default_factory=set)  # a delete was sent, maybe done
    in_doubt: set[str] = field(default_factory=set)  # a delete failed oddly: either is fine

    def expected(self) -> dict[str, str]:
        gone = self.deleted | self.in_doubt
        return {doc: marker for doc, marker in self.added.items() if doc not in gone}


def retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("Retry-After", 1)), 2.0)
    except ValueError:
        return 1.0


def error_event_is_retryable(event: dict) -> bool:
    return event.get("error", {}).get("type") == "service_unavailable_error"


class Load:
    def __init__(
        self, client: httpx.AsyncClient, url: str, model: str, kb: str, stop: asyncio.Event
    ) -> None:
        self.client = client
        self.url = url
        self.model = model
        self.kb = kb
        self.stop = stop
        self.tally = Tally()
        self.docs = Documents()

    async def _request(self, kind: str, sending) -> httpx.Response | None:
        """Await `sending`; a transport failure or a timeout counts as a failure (None)."""
        try:
            return await sending
        except (httpx.HTTPError, ValueError) as exc:  # ValueError: a body that is not JSON
            self.tally.count(kind, "failed", f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.5)  # a server that is gone would be asked in a tight loop
            return None

    async def _refused(self, kind: str, response: httpx.Response) -> None:
        """A non-2xx answer: retryable (then wait as told) or a failure."""
        if response.status_code in RETRYABLE_STATUS:
            self.tally.count(kind, "retryable")
            await asyncio.sleep(retry_after(response))
        else:
            self.tally.count(kind, "failed", f"{response.status_code} {response.text[:200]}")

    # ------------------------------------------------------------------ chat
    async def chat_streams(self, worker: int) -> None:
        """Streamed chat, one request after another; every third leaves after three chunks."""
        n = 0
        while not self.stop.is_set():
            prompt = BENCH_TEXTS[(worker + n) % len(BENCH_TEXTS)]
            await self._request("chat stream", self._stream(prompt, hang_up=n % 3 == 2))
            n += 1

    async def _stream(self, prompt: str, hang_up: bool) -> None:
        kind = "chat stream"
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 48,
            "temperature": 0.8,
            "stream": True,
        }
        async with self.client.stream("POST", f"{self.url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return await self._refused(kind, r)
            chunks = 0
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    return self.tally.count(kind, "ok")
                event = json.loads(line.removeprefix("data: "))
                if "error" in event:
                    outcome = "retryable" if error_event_is_retryable(event) else "failed"
                    return self.tally.count(kind, outcome, line)
                chunks += 1
                if hang_up and chunks == 3:  # leaving the block closes the connection
                    self.tally.hung_up += 1
                    return self.tally.count(kind, "ok")
            self.tally.count(kind, "failed", "the stream ended without data: [DONE]")

    async def rag_chats(self, worker: int) -> None:
        """Chat grounded on the knowledge base (`knowledge_base` in the body, as extra_body)."""
        n = 0
        while not self.stop.is_set():
            question = BENCH_TEXTS[(worker * 3 + n) % len(BENCH_TEXTS)][:12]
            body = {
                "model": self.model,
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 32,
                "knowledge_base": self.kb,
            }
            url = f"{self.url}/v1/chat/completions"
            r = await self._request("rag chat", self.client.post(url, json=body))
            if r is not None and r.status_code == 200 and "sources" in r.json():
                self.tally.count("rag chat", "ok")
            elif r is not None:
                await self._refused("rag chat", r)
            n += 1

    # ------------------------------------------------------------------ documents
    async def documents(self, tag: str) -> None:
        """Upload a document with a word of its own, and delete every third one added."""
        n = 0
        while not self.stop.is_set():
            if n % 3 == 2 and self.docs.pending_deletes:
                await self.delete(self.docs.pending_deletes.popleft())
            else:
                await self._upload(f"soak{tag}doc{n:05d}", n)
            n += 1
            await asyncio.sleep(0.2)  # a steady trickle: writes are not what this measures

    async def _upload(self, marker: str, n: int) -> None:
        text = f"{marker}。" + "".join(BENCH_TEXTS[(n + k) % len(BENCH_TEXTS)] for k in range(3))
        files = [("files", (f"{marker}.txt", text.encode()))]
        url = f"{self.url}/v1/knowledge_bases/{self.kb}/documents"
        r = await self._request("upload", self.client.post(url, files=files))
        if r is None:
            return
        if r.status_code != 200:
            return await self._refused("upload", r)
        result = r.json()["results"][0]
        if result["status"] != "added":
            return self.tally.count("upload", "failed", json.dumps(result, ensure_ascii=False))
        doc = result["document"]["id"]
        self.docs.added[doc] = marker
        self.tally.count("upload", "ok")
        if n % 2:  # about a third of all documents are deleted again
            self.docs.pending_deletes.append(doc)

    async def delete(self, doc: str) -> bool:
        """Delete `doc`; True once it is surely gone (a retryable refusal queues it again)."""
        url = f"{self.url}/v1/knowledge_bases/{self.kb}/documents/{doc}"
        tried = doc in self.docs.tried_deleting
        self.docs.tried_deleting.add(doc)
        r = await self._request("delete", self.client.delete(url))
        if r is not None and (r.status_code == 200 or (r.status_code == 404 and tried)):
            # 404 after an earlier try that got no answer: that try deleted it
            self.docs.deleted.add(doc)
            self.tally.count("delete", "ok")
            return True
        if r is not None:
            await self._refused("delete", r)
        if r is not None and r.status_code in RETRYABLE_STATUS:
            self.docs.pending_deletes.append(doc)
        else:
            self.docs.in_doubt.add(doc)
        return False
