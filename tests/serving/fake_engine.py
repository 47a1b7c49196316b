"""A fake model for route tests: an `Engine` that answers instantly and always the same way,
and a character tokenizer with a ChatML template. No weights, no threads."""

from __future__ import annotations

from serving.config import Settings
from serving.engine.base import (
    Engine,
    EngineNotReadyError,
    EngineRequest,
    EngineStats,
    GenerationDelta,
    QueueFullError,
)
from serving.engine.factory import LoadedModel

#: what the fake model says to everything, one character per token
ANSWER = "你好，我是小φ。"


class CharTokenizer:
    """One token per Unicode character (its code point); the chat template is ChatML."""

    def __len__(self) -> int:
        return 0x110000

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}

    def apply_chat_template(
        self,
        messages,
        add_generation_prompt=False,
        tokenize=True,
        return_dict=True,
        documents=None,
        **kwargs,
    ):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        if add_generation_prompt:
            text += "<|im_start|>assistant\n"
        return self(text)["input_ids"] if tokenize else text


class FakeEngine(Engine):
    """Every request gets `answer` (cut at `max_new_tokens` or a stop string), one delta per
    character. `fail_after`: deltas before the engine fails the request, as a lost device would.
    `max_running`: open streams beyond it are refused with `QueueFullError`."""

    def __init__(
        self,
        answer: str = ANSWER,
        context_length: int = 128,
        max_running: int = 16,
        fail_after: int | None = None,
    ) -> None:
        self.answer = answer
        self.context_length = context_length
        self.max_running = max_running
        self.fail_after = fail_after
        self.ready = False
        self.requests: list[EngineRequest] = []  # every request submitted, in order
        self.open: dict[str, FakeStream] = {}

    async def start(self) -> None:
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for stream in list(self.open.values()):
            stream.end("error", "server is shutting down")

    def submit(self, request: EngineRequest) -> FakeStream:
        if not self.ready:
            raise EngineNotReadyError(self.unavailable_reason)
        if len(self.open) >= self.max_running:
            raise QueueFullError(f"{len(self.open)} requests running and 0 waiting; retry later")
        self.requests.append(request)
        stream = FakeStream(self, request)
        self.open[request.request_id] = stream
        return stream

    async def cancel(self, request_id: str) -> None:
        stream = self.open.get(request_id)
        if stream is not None:
            stream.end("cancelled")

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self.open), waiting=0)

    @property
    def is_ready(self) -> bool:
        return self.ready


class FakeStream:
    """The deltas of one request; `aclose()` cancels it."""

    def __init__(self, engine: FakeEngine, request: EngineRequest) -> None:
        self._engine = engine
        self._id = request.request_id
        params = request.params
        text = engine.answer[: params.max_new_tokens]
        self._reason = "stop" if len(text) == len(engine.answer) else "length"
        for stop in params.stop:
            if stop in text:
                text, self._reason = text[: text.index(stop)], "stop"
        self._pieces = list(text)
        self._sent = 0
        self._end: GenerationDelta | None = None  # set when the stream is ended early

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> GenerationDelta:
        if self._id not in self._engine.open:
            if self._end is None:
                raise StopAsyncIteration
            end, self._end = self._end, None
            return end
        fail_after = self._engine.fail_after
        if fail_after is not None and self._sent >= fail_after:
            self.end("error", "device lost")
            return await self.__anext__()
        piece = self._pieces[self._sent] if self._sent < len(self._pieces) else ""
        self._sent += 1
        delta = GenerationDelta(text=piece, token_ids=[ord(c) for c in piece])
        delta.completion_tokens = min(self._sent, len(self._pieces))
        if self._sent >= len(self._pieces):
            delta.finish_reason = self._reason
            del self._engine.open[self._id]
        return delta

    def end(self, reason: str, error: str | None = None) -> None:
        if self._engine.open.pop(self._id, None) is not None:
            self._end = GenerationDelta(
                finish_reason=reason, error=error, completion_tokens=self._sent
            )

    async def aclose(self) -> None:
        self.end("cancelled")
        self._end = None


def fake_loader(engine: FakeEngine):
    """A `load` for `create_app`: the fake engine and tokenizer instead of a checkpoint."""

    def load(settings: Settings) -> LoadedModel:
        return LoadedModel(engine=engine, tokenizer=CharTokenizer(), name=settings.model_name)

    return load
