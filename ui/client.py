"""The page's only way to the model: a xiaophi server's OpenAI routes (chat streams through the
`openai` client) and its KB routes (plain HTTP).

Every failure becomes a `UIError` whose message a Chinese-speaking user can read in the page.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import openai
from openai.types.chat import ChatCompletionChunk

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
    knowledge_base: str | None = None

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> Source:
        return cls(
            knowledge_base=item.get("knowledge_base"),
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
class ToolCall:
    """A call the model made; `arguments` is its JSON text, as the model wrote it."""

    id: str
    name: str
    arguments: str

    def as_message_part(self) -> dict[str, Any]:
        """The call as an assistant message's `tool_calls` entry sends it back."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class ChatSettings:
    """What the page lets the user choose for one answer."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 256
    knowledge_base: str | list[str] | None = None  # several: searched as one
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


def _error_from_response(response: Any) -> UIError:
    """`response`: an httpx response, or the openai client's (same interface, from httpx2)."""
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
    ) -> None:
        self.api_url = api_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout)
        self._openai = openai.OpenAI(
            base_url=f"{self.api_url}/v1",
            # the client insists on a key; without one no Authorization header goes (see below)
            api_key=api_key or "unused",
            timeout=openai.Timeout(**timeout.as_dict())
            if isinstance(timeout, httpx.Timeout)
            else timeout,
            max_retries=0,  # the user retries; a busy server's 429 is shown, not waited out
        )
        # as the KB routes: a server that wants a key says 401 "missing", not "wrong"
        self._no_key_headers = {} if api_key else {"Authorization": openai.Omit()}

    def close(self) -> None:
        self._http.close()
        self._openai.close()

    def __enter__(self) -> XiaophiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _connection_error(self, exc: Exception) -> UIError:
        """`exc`: an httpx error, or the openai client's APIConnectionError wrapping one."""
        if isinstance(exc, (httpx.TimeoutException, openai.APITimeoutError)):
            return UIError(f"API 服务器 {self.api_url} 响应超时，请稍后再试。")
        cause = exc.__cause__ if isinstance(exc, openai.APIConnectionError) else exc
        return UIError(
            f"无法连接到 API 服务器 {self.api_url}：请确认 xiaophi-serve 已启动、地址正确。"
            f"（{type(cause or exc).__name__}）"
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

    def search(self, knowledge_base: str | list[str], query: str, top_k: int = 5) -> list[Source]:
        """One knowledge base's passages, or several's ranked together."""
        if isinstance(knowledge_base, str) or len(knowledge_base) == 1:
            name = knowledge_base if isinstance(knowledge_base, str) else knowledge_base[0]
            path = f"/v1/knowledge_bases/{_quote(name)}/search"
            body = self._request("POST", path, json={"query": query, "top_k": top_k})
        else:
            body = self._request(
                "POST",
                "/v1/knowledge_bases/search",
                json={"knowledge_bases": list(knowledge_base), "query": query, "top_k": top_k},
            )
        return [Source.from_api(hit) for hit in body.get("data", [])]

    def list_tools(self) -> list[dict[str, Any]]:
        """The tools the server runs (`/v1/tools`), as a chat request's `tools` takes them."""
        return self._request("GET", "/v1/tools").get("data", [])

    def run_tool(self, name: str, arguments: str | dict[str, Any]) -> str:
        """Run one of the server's tools; what to send back to the model."""
        body = self._request("POST", f"/v1/tools/{_quote(name)}", json={"arguments": arguments})
        return str(body.get("content", ""))

    def stream_chat(
        self,
        messages: list[dict[str, Any]],
        settings: ChatSettings,
        model: str | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Iterator[str | list[Source] | ToolCall]:
        """Yield text deltas as they arrive, then (for a RAG answer) the list of sources, then
        each tool call the model made (offered `tools`, it may answer with calls)."""
        if model is None:
            models = self.list_models()
            if not models:
                raise UIError("API 服务器没有可用的模型。")
            model = models[0]
        extra_body = dict(settings.extra)
        if settings.knowledge_base:
            extra_body["knowledge_base"] = settings.knowledge_base
        offered = {"tools": tools} if tools else {}
        try:
            stream = self._openai.chat.completions.create(
                **offered,
                model=model,
                messages=messages,
                stream=True,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_tokens=settings.max_tokens,
                extra_body=extra_body,
                extra_headers=self._no_key_headers,
            )
            with stream:
                yield from _chat_events(stream)
        except openai.APIStatusError as exc:  # refused before the stream began
            raise _error_from_response(exc.response) from exc
        except openai.APIConnectionError as exc:  # timeouts included
            raise self._connection_error(exc) from exc
        except openai.APIError as exc:  # an error event in the stream
            body = exc.body if isinstance(exc.body, dict) else {}
            raise UIError(
                f"生成过程中出错。服务器说：{body.get('message') or exc.message}",
                code=body.get("code"),
            ) from exc


def _chat_events(
    chunks: Iterator[ChatCompletionChunk],
) -> Iterator[str | list[Source] | ToolCall]:
    """Text deltas and the sources (a RAG answer's extra `sources` field) of a chat stream, then
    its tool calls, each put together from its deltas (id and name first, then the arguments
    in pieces, as OpenAI streams them)."""
    finished = False
    calls: dict[int, ToolCall] = {}
    for chunk in chunks:
        sources = (chunk.model_extra or {}).get("sources")
        if sources:
            yield [Source.from_api(s) for s in sources]
        for choice in chunk.choices:
            if choice.delta and choice.delta.content:
                yield choice.delta.content
            for part in (choice.delta.tool_calls if choice.delta else None) or []:
                call = calls.setdefault(part.index, ToolCall("", "", ""))
                call.id = part.id or call.id
                if part.function is not None:
                    call.name = part.function.name or call.name
                    call.arguments += part.function.arguments or ""
            finished = finished or choice.finish_reason is not None
    # the client ends quietly when the connection closes early; an answer always says why it ended
    if not finished:
        raise UIError("回答中途断开了（连接被关闭），请重试。")
    yield from (calls[i] for i in sorted(calls))


def _quote(name: str) -> str:
    return quote(name, safe="")
