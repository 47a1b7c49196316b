"""The engine seam: what the routes need from whatever runs the model.

An engine takes a tokenized request with its sampling parameters and streams back
`GenerationDelta`s until one carries a finish reason; it can cancel a request at any time.
The routes and the service never touch a model; a new engine only has to implement `Engine`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:  # the grammar layer (xgrammar) loads only where a request uses it
    from serving.engine.grammar_spec import GrammarSpec

FinishReason = Literal["stop", "length", "cancelled", "error"]
#: Temperatures below this decode greedily (as vLLM does below 1e-5).
GREEDY_TEMPERATURE = 1e-5


@dataclass
class SamplingParams:
    """Per-request decoding settings (OpenAI names; `temperature == 0` means greedy)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    #: OpenAI's penalties, over the generated tokens only: logit -= frequency × count and
    #: -= presence × (count > 0)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    #: token id → added to its logit (before the penalties, as vLLM does)
    logit_bias: dict[int, float] = field(default_factory=dict)
    min_p: float = 0.0
    #: no end (EOS or a stop token) before this many generated tokens
    min_tokens: int = 0
    #: EOS does not end generation (its text is still left out)
    ignore_eos: bool = False
    #: ids that end generation like EOS (finish_reason "stop")
    stop_token_ids: list[int] = field(default_factory=list)
    #: the stop string (or stop token's text) that ended the answer stays in it
    include_stop_str_in_output: bool = False
    #: None: no logprobs; n ≥ 0: each generated token's logprob and the n likeliest tokens'
    logprobs: int | None = None
    #: None: none; n ≥ 0: the prompt tokens' logprobs too (completions' `echo`)
    prompt_logprobs: int | None = None
    #: structured output: the grammar every generated token must follow (`response_format`)
    grammar: GrammarSpec | None = None

    @property
    def greedy(self) -> bool:
        # below GREEDY_TEMPERATURE, logits / temperature overflows float32: argmax is the limit
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1

    @property
    def adjusts_logits(self) -> bool:
        """Whether anything changes the model's logits before the choice (beyond temperature,
        top-k/top-p/min-p, which only sampled requests apply)."""
        return bool(
            self.repetition_penalty != 1.0
            or self.presence_penalty
            or self.frequency_penalty
            or self.logit_bias
            or self.min_tokens
        )


@dataclass
class TokenLogprob:
    """One position's logprob, from the model's raw distribution (log-softmax of its logits in
    float32, before penalties, temperature or filters: what vLLM reports by default), with the
    likeliest tokens there (`top`: (token id, logprob), most likely first)."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class EngineRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class GenerationDelta:
    """New output for one request since the previous delta.

    `text` only ever holds whole characters, never a pending stop-string prefix, never the
    stop string itself. The last delta of a request has `finish_reason` set.
    """

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    #: with `SamplingParams.logprobs`: one entry per token of `token_ids`
    logprobs: list[TokenLogprob] | None = None
    #: with `SamplingParams.prompt_logprobs`, on the first delta: one per prompt token (the
    #: first None: nothing comes before it)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    finish_reason: FinishReason | None = None
    error: str | None = None
    #: with an error: the HTTP status it stands for, when an upstream server said (remote engine)
    #: or the engine knows (503 while its process restarts)
    status: int | None = None
    #: with an error: its OpenAI error code, when the engine knows a more telling one
    code: str | None = None
    completion_tokens: int = 0  # total generated so far (not just this delta)


@dataclass
class EngineStats:
    running: int
    waiting: int
    restarts: int = 0  # times the engine's process died and was started again


class DeltaStream(Protocol):
    """What `Engine.submit` returns: an async iterator of deltas that `aclose()` cancels."""

    def __aiter__(self) -> DeltaStream: ...

    async def __anext__(self) -> GenerationDelta: ...

    async def aclose(self) -> None: ...


class QueueFullError(RuntimeError):
    """The engine's waiting queue is full; the caller should retry later."""


class EngineNotReadyError(RuntimeError):
    """The engine is not running (not loaded yet, stopped, or crashed)."""


class EngineRestartingError(EngineNotReadyError):
    """The engine's process died and a new one is on its way: retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


#: `GenerationDelta.code` of the requests an engine fails because its process died and is
#: being restarted: the client should retry them (in-stream, where no status can say so).
ENGINE_RESTARTING = "engine_restarting"

#: An engine's state for /health: "ok", "restarting" (its process died, a new one is on its
#: way) or "stopped" (not running: stopping, or lost for good).
EngineStatus = Literal["ok", "restarting", "stopped"]


class Engine(ABC):
    """Runs one model; many concurrent requests share it."""

    #: longest prompt + generation the model accepts
    context_length: int
    #: Set by the app: called on the event loop, with the reason, when the engine has stopped
    #: for good on its own (its process could not be kept running); the server then exits.
    on_lost: Callable[[str], None] | None = None

    @abstractmethod
    async def start(self) -> None:
        """Load and warm up; called once from the app's lifespan."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop generating and free resources; pending requests end with an error delta."""

    @abstractmethod
    def submit(self, request: EngineRequest) -> DeltaStream:
        """Queue `request` and return the stream of its deltas.

        Raises `QueueFullError` or `EngineNotReadyError` at once, before any delta.
        Closing the stream early (`aclose()`) cancels the request and frees its place in the batch.
        """

    @abstractmethod
    async def cancel(self, request_id: str) -> None:
        """Stop generating for `request_id`; its stream ends with `finish_reason="cancelled"`."""

    @abstractmethod
    def stats(self) -> EngineStats:
        """Requests being generated and requests queued behind them."""

    @property
    @abstractmethod
    def is_ready(self) -> bool:
        """True while the engine accepts requests."""

    @property
    def unavailable_reason(self) -> str:
        """Why the engine is not ready, for `/health` and 503 bodies."""
        return "the model engine stopped"

    @property
    def status(self) -> EngineStatus:
        return "ok" if self.is_ready else "stopped"

    def not_ready_error(self) -> EngineNotReadyError:
        """What `submit` raises while the engine is not ready."""
        return EngineNotReadyError(self.unavailable_reason)
