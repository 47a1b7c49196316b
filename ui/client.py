"""The page's only way to the model: HTTP calls to a xiaophi server (OpenAI routes + KB routes).

Every failure becomes a `UIError` whose message a Chinese-speaking user can read in the page.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

# Generation can take a while on CPU; connecting should not.
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=5.0)


class UIError(Exception):
    """A failure the page shows as it is: `message` is already readable (Chinese)."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str | None = None,
        results: list[UploadResult] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        # An upload where every file was rejected still says why, file by file.
        self.results = results or []


@dataclass
class Source:
    """One passage a RAG answer was grounded in."""

    filename: str
    snippet: str
    score: float | None = None
    chunk_index: int | None = None
    page: int | None = None
    document_id: str | None = None

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> Source:
        return cls(
            filename=str(item.get("filename") or item.get("document_id") or "?"),
            snippet=str(item.get("snippet") or item.get("text") or ""),
            score=item.get("score"),
            chunk_index=item.get("chunk_index"),
            page=item.get("page"),
            document_id=item.get("document_id"),
        )


@dataclass
class UploadResult:
    """What happened to one uploaded file."""

    filename: str
    status: str  # added | duplicate | rejected
    chunks: int | None = None
    duplicate_of: str | None = None
    error: str | None = None
    reason: str | None = None

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> UploadResult:
        document = item.get("document") or {}
        return cls(
            filename=str(item.get("filename") or "?"),
            status=str(item.get("status") or "rejected"),
            chunks=document.get("chunks"),
            duplicate_of=item.get("duplicate_of"),
            error=item.get("error"),
            reason=item.get("reason"),
        )


@dataclass
class ChatSettings:
    """What the page lets the user choose for one answer."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 256
    knowledge_base: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _status_summary(status: int, code: str | None) -> str:
    if status == 401:
        return "API key 错误或缺失，请在「API key」一栏填写正确的 key"
    if status == 403:
        return "没有权限"
    if status == 404:
        return "找不到请求的资源"
    if status == 409:
        return "名称冲突：已经存在同名的知识库"
    if status == 413:
        return "请求太大（文件或内容超过服务器上限）"
    if status == 429:
        return "服务器繁忙，请稍后再试"
    if status == 503:
        return "服务暂不可用（模型或知识库尚未就绪）"
    if status == 400 and code == "context_length_exceeded":
        return "请求太长，超过了模型的上下文长度：请缩短对话、开始新对话或减少 max tokens"
    if status in (400, 422):
        return "请求无效"
    if status >= 500:
        return "服务器内部错误"
    return f"请求失败（HTTP {status}）"


def _error_from_body(status: int, body: Any) -> UIError:
    """Turn an OpenAI-style error body (or anything else) into a readable UIError."""
    message = code = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message")
        code = body["error"].get("code")
    elif isinstance(body, dict) and "detail" in body:
        message = str(body["detail"])
    elif isinstance(body, str) and body.strip():
        message = body.strip()[:300]
    summary = _status_summary(status, code)
    text = f"{summary}。服务器说：{message}" if message else f"{summary}。"
    results = []
    if isinstance(body, dict) and isinstance(body.get("results"), list):
        results = [UploadResult.from_api(r) for r in body["results"] if isinstance(r, dict)]
    return UIError(text, status=status, code=code, results=results)


def _error_from_response(response: httpx.Response) -> UIError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return _error_from_body(response.status_code, body)


class XiaophiClient:
    """Talks to one xiaophi server. Cheap to build: the page makes one per request."""

    def __init__(
        self,
        api_url: str,
        api_key: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.api_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> XiaophiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _connection_error(self, exc: httpx.HTTPError) -> UIError:
        if isinstance(exc, httpx.TimeoutException):
            return UIError(f"API 服务器 {self.api_url} 响应超时，请稍后再试。")
        return UIError(
            f"无法连接到 API 服务器 {self.api_url}：请确认 xiaophi-serve 已启动、地址正确。"
            f"（{type(exc).__name__}）"
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._connection_error(exc) from exc
        if response.status_code >= 400:
            raise _error_from_response(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise UIError(
                f"API 服务器返回了无法解析的内容（{path}），地址是否指向了 xiaophi 服务器？"
            ) from exc

    # ------------------------------------------------------------------ routes

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def list_models(self) -> list[str]:
        body = self._request("GET", "/v1/models")
        return [m["id"] for m in body.get("data", [])]

    def list_knowledge_bases(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/knowledge_bases").get("data", [])

    def create_knowledge_base(self, name: str) -> dict[str, Any]:
        name = name.strip()
        if not name:
            raise UIError("请输入知识库名称。")
        return self._request("POST", "/v1/knowledge_bases", json={"name": name})

    def list_documents(self, knowledge_base: str) -> list[dict[str, Any]]:
        path = f"/v1/knowledge_bases/{_quote(knowledge_base)}/documents"
        return self._request("GET", path).get("data", [])

    def upload_documents(
        self, knowledge_base: str, paths: Sequence[str | Path]
    ) -> list[UploadResult]:
        """Send several files in one request; a file the server refuses is a result, not an error."""
        if not knowledge_base:
            raise UIError("请先选择一个知识库（不能是「无」）。")
        if not paths:
            raise UIError("请先选择要上传的文件。")
        handles = []
        try:
            files = []
            for path in paths:
                path = Path(path)
                handle = path.open("rb")
                handles.append(handle)
                mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                files.append(("files", (path.name, handle, mime)))
            path = f"/v1/knowledge_bases/{_quote(knowledge_base)}/documents"
            try:
                body = self._request("POST", path, files=files)
            except UIError as exc:
                if exc.results:  # every file rejected: the reasons are in the results
                    return exc.results
                raise
        finally:
            for handle in handles:
                handle.close()
        return [UploadResult.from_api(r) for r in body.get("results", [])]

    def search(self, knowledge_base: str, query: str, top_k: int = 5) -> list[Source]:
        path = f"/v1/knowledge_bases/{_quote(knowledge_base)}/search"
        body = self._request("POST", path, json={"query": query, "top_k": top_k})
        return [Source.from_api(hit) for hit in body.get("data", [])]

    def stream_chat(
        self, messages: list[dict[str, str]], settings: ChatSettings, model: str | None = None
    ) -> Iterator[str | list[Source]]:
        """Yield text deltas as they arrive, then (for a RAG answer) the list of sources."""
        if model is None:
            models = self.list_models()
            if not models:
                raise UIError("API 服务器没有可用的模型。")
            model = models[0]
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "stream": True,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "max_tokens": settings.max_tokens,
            **settings.extra,
        }
        if settings.knowledge_base:
            body["knowledge_base"] = settings.knowledge_base
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from_response(response)
                yield from _parse_chat_stream(response.iter_lines())
        except httpx.HTTPError as exc:
            raise self._connection_error(exc) from exc


def _parse_chat_stream(lines: Iterator[str]) -> Iterator[str | list[Source]]:
    finished = False
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments, keep-alives
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            finished = True
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if "error" in chunk:
            error = chunk["error"] if isinstance(chunk["error"], dict) else {}
            raise UIError(
                f"生成过程中出错。服务器说：{error.get('message') or chunk['error']}",
                code=error.get("code"),
            )
        if chunk.get("sources"):
            yield [Source.from_api(s) for s in chunk["sources"]]
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                yield text
    if not finished:
        raise UIError("回答中途断开了（连接被关闭），请重试。")


def _quote(name: str) -> str:
    return quote(name, safe="")
