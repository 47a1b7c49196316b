"""The `remote` engine: generation on any OpenAI-compatible server (vLLM, SGLang, TGI,
`transformers serve`, another xiaophi), everything else here.

xiaophi still renders every prompt with the local checkpoint's tokenizer and chat template
(so RAG passage fitting, `max_tokens` caps and usage stay exact) and sends the result to the
upstream's `/v1/completions`: as token ids when the upstream takes them, else as text — and
then only when that text tokenises back to the same ids, so a forged control token inside a
message never reaches the upstream as one. Each choice is one streamed upstream request;
closing it closes that HTTP stream, which is how the upstream learns to stop. Admission (at
most `max_running` upstream requests, `max_waiting` queued, 429 beyond), stop strings and
finish reasons are `QueuedEngine`'s, as for the local engines.

Upstream refusals keep their status (its 4xx → the same 4xx); an upstream that cannot be
reached, times out or fails (5xx) gives 503 / 502 naming its address. A background probe of
`GET {base}/models` keeps `is_ready` (and `/health`) current, so the server turns 503 while
the upstream is down and recovers when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Literal

import httpx

from serving.engine.base import EngineRequest, TokenLogprob
from serving.engine.queued import QueuedEngine, RequestState

logger = logging.getLogger(__name__)

PromptFormat = Literal["auto", "ids", "text"]
#: `owned_by` in the model cards of llama.cpp's servers (its `llama-server`; llama-cpp-python's
#: `python -m llama_cpp.server`): they call the repetition penalty `repeat_penalty` and apply
#: their own defaults to sampling fields a request leaves out (penalty 1.1, top-k 40, min-p 0.05)
LLAMA_CPP_OWNERS = {"llamacpp", "me"}


class UpstreamError(Exception):
    """The upstream refused or failed a request: `status` is what the client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RemoteEngine(QueuedEngine):
    def __init__(
        self,
        tokenizer,
        *,
        base_url: str,
        context_length: int,
        api_key: str | None = None,
        model: str | None = None,
        prompt_format: PromptFormat = "auto",
        max_running: int = 32,
        max_waiting: int = 128,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        health_interval_s: float = 2.0,
    ) -> None:
        super().__init__(
            tokenizer,
            context_length=context_length,
            eos_token_ids=(),  # the upstream ends at EOS and says so; its text carries no ids
            max_running=max_running,
            max_waiting=max_waiting,
        )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.prompt_format: PromptFormat = prompt_format
        self.llama_cpp = False  # the upstream is llama.cpp's server (from its model card)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self._health_interval_s = health_interval_s
        self._client: httpx.AsyncClient | None = None
        self._tasks: dict[str, asyncio.Task] = {}
        self._prober: asyncio.Task | None = None
        self._reachable = False
        self._reason = f"the upstream at {self.base_url} has not answered yet"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        # No idle connections are kept: one the upstream closed meanwhile (uvicorn ends idle
        # ones after 5 s) would fail the next request sent on it. A connect per request costs
        # nothing beside a generation.
        limits = httpx.Limits(max_connections=self.max_running + 4, max_keepalive_connections=0)
        self._client = httpx.AsyncClient(
            headers=self._headers, timeout=self._timeout, limits=limits
        )
        await self._probe()  # not fatal: the server starts and says 503 until it answers
        self._prober = asyncio.create_task(self._probe_forever())

    async def stop(self) -> None:
        self._fail_all("server is shutting down")
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    @property
    def is_ready(self) -> bool:
        return self._client is not None and self._reachable

    @property
    def unavailable_reason(self) -> str:
        return self._reason

    # ------------------------------------------------------------------ upstream state
    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval_s)
            await self._probe()

    async def _probe(self) -> None:
        """Is the upstream there, which model does it serve, does it take token-id prompts?"""
        try:
            response = await self._client.get(f"{self.base_url}/models")
            if response.status_code >= 400:
                raise UpstreamError(503, self._refusal(response, await response.aread()))
            cards = response.json().get("data", [])
            listed = [m.get("id") for m in cards]
            if self.model is None:
                # several: the one that generates is the one with a context length (xiaophi
                # lists its embedder too, without one)
                generating = [m.get("id") for m in cards if m.get("max_model_len")]
                if len(listed) > 1 and len(generating) == 1:
                    listed = generating
                if len(listed) != 1:
                    raise UpstreamError(
                        503,
                        f"the upstream at {self.base_url} lists {len(listed)} models "
                        f"({', '.join(map(str, listed)) or 'none'}); set XIAOPHI_REMOTE_MODEL",
                    )
                self.model = listed[0]
            owners = {m.get("owned_by") for m in cards if m.get("id") == self.model}
            self.llama_cpp = bool(owners & LLAMA_CPP_OWNERS)
            if self.prompt_format == "auto":
                self.prompt_format = await self._detect_prompt_format()
        except Exception as exc:  # whatever failed, it is not ready; the prober lives on
            if self._reachable:
                logger.warning("upstream %s unavailable: %s", self.base_url, exc)
            self._reachable = False
            self._reason = _describe(exc, self.base_url)
            return
        if not self._reachable:
            logger.info(
                "upstream %s ready (model %s, %s prompts)",
                self.base_url,
                self.model,
                self.prompt_format,
            )
        self._reachable = True
        self._admit_waiting()

    async def _detect_prompt_format(self) -> PromptFormat:
        """`ids` if a one-token completion of a token-id prompt works, else `text`. A 5xx to
        the ids is a failing upstream — unless a text prompt then works: llama-cpp-python's
        server answers its own validation error (a prompt that is not a string) with a 500."""
        body = {"model": self.model, "max_tokens": 1, "temperature": 0}
        ids = self.tokenizer("你好")["input_ids"] or [0]
        url = f"{self.base_url}/completions"
        response = await self._client.post(url, json={**body, "prompt": ids})
        if response.status_code < 500:
            return "ids" if response.status_code < 400 else "text"
        if (await self._client.post(url, json={**body, "prompt": "你好"})).status_code < 400:
            return "text"
        raise UpstreamError(502, self._refusal(response, response.content))

    # ------------------------------------------------------------------ requests
    def _launch(self, state: RequestState) -> None:
        task = asyncio.get_running_loop().create_task(self._generate(state))
        self._tasks[state.engine_id] = task
        task.add_done_callback(lambda _, key=state.engine_id: self._tasks.pop(key, None))

    def _abort(self, state: RequestState) -> None:
        task = self._tasks.pop(state.engine_id, None)
        # leaving the `stream` block closes the upstream connection: the upstream stops; a
        # request cut at a stop string leaves it by itself
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _generate(self, state: RequestState) -> None:
        try:
            await self._stream(state)
        except asyncio.CancelledError:
            raise
        except UpstreamError as exc:
            self._fail(state, exc.status, exc.message)
        except httpx.HTTPError as exc:
            self._reachable = False
            self._reason = _describe(exc, self.base_url)
            self._fail(state, 503, self._reason)
        except Exception as exc:  # a malformed event: this request fails, not the engine
            logger.exception("bad answer from upstream %s", self.base_url)
            self._fail(state, 502, f"the upstream at {self.base_url} sent a bad answer: {exc}")

    async def _stream(self, state: RequestState) -> None:
        """One upstream completion, streamed into `state` (after its prompt's logprobs, when
        asked: a request of their own, `echo` with no new token)."""
        params = state.request.params
        if params.prompt_logprobs is not None or params.max_new_tokens == 0:
            scored = await self._score_prompt(state.request)
            self._deliver_text(
                state, "", 0, "length" if params.max_new_tokens == 0 else None, None, scored
            )
            if state.done:
                return
        request = self._client.build_request(
            "POST", f"{self.base_url}/completions", json=self._body(state.request)
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError:
            raise
        except Exception as exc:  # the transport failed under us (seen: a reset socket)
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        try:
            await self._read(state, response)
        finally:
            await response.aclose()

    async def _score_prompt(self, request: EngineRequest) -> list[TokenLogprob | None]:
        body = {
            "model": self.model,
            "prompt": self._prompt(request.prompt_ids),
            "max_tokens": 0,
            "echo": True,
            "logprobs": request.params.prompt_logprobs or 0,
            "return_tokens_as_token_ids": True,
        }
        response = await self._client.post(f"{self.base_url}/completions", json=body)
        if response.status_code >= 400:
            raise UpstreamError(
                _client_status(response.status_code), self._refusal(response, response.content)
            )
        logprobs = response.json()["choices"][0]["logprobs"]
        scored = read_logprobs(logprobs)
        if len(scored) != len(request.prompt_ids):
            raise UpstreamError(
                502,
                f"the upstream at {self.base_url} scored {len(scored)} prompt tokens, "
                f"not {len(request.prompt_ids)}",
            )
        return scored

    async def _read(self, state: RequestState, response: httpx.Response) -> None:
        """The upstream's answer into `state`. Tokens are counted per delta while it streams
        (for the metrics) and once at the end: the upstream's usage, else the whole text."""
        text, finish, counted, tokens = "", None, None, 0
        wants_logprobs = state.request.params.logprobs is not None
        if response.status_code >= 400:
            raise UpstreamError(
                _client_status(response.status_code),
                self._refusal(response, await response.aread()),
            )
        async for event in _events(response):
            if "error" in event:
                raise UpstreamError(502, self._refusal(response, event))
            usage = event.get("usage") or {}
            counted = usage.get("completion_tokens", counted)
            for choice in (event.get("choices") or [])[:1]:
                delta = choice.get("text") or ""
                logprobs = None
                if wants_logprobs and choice.get("logprobs"):
                    logprobs = read_logprobs(choice["logprobs"])
                if delta or logprobs:
                    text += delta
                    if logprobs is not None:
                        tokens += len(logprobs)  # the upstream's own tokens
                    else:
                        tokens += self._count(delta)  # on the way: about right, and cheap
                    self._deliver_text(state, delta, tokens, None, logprobs)
                    if state.done:  # cut at a stop string: stop the upstream too
                        return
                finish = choice.get("finish_reason") or finish
        if finish is None:
            raise UpstreamError(502, f"the upstream at {self.base_url} ended the stream early")
        # at the end: the upstream's own count, else the whole answer's tokens here
        self._deliver_text(state, "", counted if counted else self._count(text), finish)

    def _body(self, request: EngineRequest) -> dict:
        params = request.params
        body: dict = {
            "model": self.model,
            "prompt": self._prompt(request.prompt_ids),
            "max_tokens": params.max_new_tokens,
            "temperature": 0.0 if params.greedy else params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.stop:
            body["stop"] = params.stop  # cut here too, for upstreams that ignore or keep them
        if params.seed is not None and not params.greedy:
            body["seed"] = params.seed
        if params.top_k:
            body["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty
        if self.llama_cpp:  # its names, and every value stated: its defaults are not ours
            body.update(
                repeat_penalty=params.repetition_penalty,
                top_k=params.top_k or 0,  # 0: off, as here
                min_p=params.min_p,
            )
        # OpenAI's fields and vLLM's extras, passed on as they are when set
        for name, unset in (
            ("presence_penalty", 0.0),
            ("frequency_penalty", 0.0),
            ("min_p", 0.0),
            ("min_tokens", 0),
            ("ignore_eos", False),
            ("include_stop_str_in_output", False),
        ):
            if getattr(params, name) != unset:
                body[name] = getattr(params, name)
        if params.logit_bias:
            body["logit_bias"] = {str(k): v for k, v in params.logit_bias.items()}
        if params.stop_token_ids:
            body["stop_token_ids"] = params.stop_token_ids
        if params.grammar is not None:
            body.update(grammar_fields(params.grammar))
        if params.logprobs is not None:
            # token ids back, not texts: the same tokenizer's ids are what logprobs are kept as
            body["logprobs"] = params.logprobs
            body["return_tokens_as_token_ids"] = True
        return body

    def _prompt(self, ids: list[int]) -> list[int] | str:
        if self.prompt_format == "ids":
            return ids
        text = self.tokenizer.decode(
            ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        if self.tokenizer(text, add_special_tokens=False)["input_ids"] != ids:
            raise UpstreamError(
                400,
                f"the upstream at {self.base_url} takes prompts as text only, and this prompt "
                "would not read back as the same tokens there (its messages contain "
                "special-token strings such as <|im_end|>); remove them, or use an upstream "
                "that takes token ids (vLLM, another xiaophi)",
            )
        return text

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _fail(self, state: RequestState, status: int, message: str) -> None:
        if not state.done:
            self._finish(state, "error", error=message, status=status)

    def _refusal(self, response: httpx.Response, body) -> str:
        return f"the upstream at {self.base_url} answered {response.status_code}: {_detail(body)}"


async def _events(response: httpx.Response):
    """The JSON events of an SSE stream; `data: [DONE]` (or the stream's end) ends it."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def _client_status(upstream_status: int) -> int:
    """An upstream 4xx is the client's to fix (same status); its 5xx is a bad gateway."""
    return upstream_status if upstream_status < 500 else 502


def _detail(body) -> str:
    """The message inside an OpenAI error body, FastAPI's `detail`, or the text itself."""
    if isinstance(body, bytes | bytearray):
        try:
            body = json.loads(body)
        except ValueError:
            return body.decode("utf-8", "replace")[:500]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if body.get("detail"):
            return str(body["detail"])[:500]
    return str(body)[:500]


def _describe(exc: BaseException, base_url: str) -> str:
    if isinstance(exc, UpstreamError):
        return exc.message
    if isinstance(exc, httpx.TimeoutException):
        return f"the upstream at {base_url} timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.TransportError):
        return f"the upstream at {base_url} is unreachable ({type(exc).__name__}: {exc})"
    return f"the upstream at {base_url} failed: {exc}"


def _token_id(text: str) -> int:
    """A token as `return_tokens_as_token_ids` writes it: "token_id:123"."""
    prefix = "token_id:"
    if not text.startswith(prefix):
        raise ValueError(
            f"the upstream named a token {text!r}, not by its id: it ignores "
            "`return_tokens_as_token_ids` (vLLM and xiaophi honour it)"
        )
    return int(text[len(prefix) :])


def read_logprobs(logprobs: dict) -> list[TokenLogprob | None]:
    """An upstream's legacy completion logprobs (tokens as ids) as `TokenLogprob`s; a
    position without a logprob (an echoed prompt's first token) is None."""
    out: list[TokenLogprob | None] = []
    for text, value, top in zip(
        logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
    ):
        if value is None:
            out.append(None)
            continue
        ranked = sorted(((_token_id(t), v) for t, v in (top or {}).items()), key=lambda e: -e[1])
        out.append(TokenLogprob(_token_id(text), value, ranked))
    return out


def grammar_fields(spec) -> dict:
    """A grammar as the upstream's request fields: JSON as `response_format`, anything else (a
    forced tool call) as vLLM's `structured_outputs.grammar`, the grammar's EBNF."""
    if spec.kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if spec.kind == "json_schema":
        schema = json.loads(spec.schema)
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": schema},
            }
        }
    from serving.engine.grammar_spec import build_grammar

    return {"structured_outputs": {"grammar": str(build_grammar(spec))}}
