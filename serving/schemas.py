"""Request and response bodies of the OpenAI-compatible routes.

Request models accept unknown fields (the openai client's `extra_body`), so new options such
as `knowledge_base` can be added without breaking older clients.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    WithJsonSchema,
    field_validator,
    model_serializer,
)

from rag.errors import InvalidInput
from rag.names import MAX_KB_NAME, check_kb_list

# ------------------------------------------------------------------ requests


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="The arguments as JSON text.")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None
    #: an assistant turn's calls, a tool turn's answer to one
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
#: most top logprobs per position (vLLM's default `--max-logprobs`)
MAX_LOGPROBS = 20


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions (OpenAI names, plus `top_k`/`repetition_penalty`)."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    # OpenAI's seed is a 64-bit signed integer; the checked message names the range
    seed: int | None = Field(None, json_schema_extra={"minimum": SEED_MIN, "maximum": SEED_MAX})
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False)
    user: str | None = None
    logit_bias: (
        dict[str, Annotated[float, Field(ge=-100.0, le=100.0, allow_inf_nan=False)]] | None
    ) = Field(None, description="Token id (as a string) → bias added to its logit, -100 to 100.")
    # extra_body (vLLM's names)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    min_p: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    min_tokens: int = Field(
        0, ge=0, description="No end (EOS, stop token) before this many tokens."
    )
    ignore_eos: bool = False
    stop_token_ids: list[StrictInt] | None = None
    include_stop_str_in_output: bool = False
    response_format: dict[str, Any] | None = Field(
        None,
        description='`{"type": "json_object"}` or `{"type": "json_schema", "json_schema": '
        '{"name": ..., "schema": {...}}}`: the answer follows it (a grammar masks each step).',
    )
    structured_outputs: dict[str, Any] | None = Field(
        None,
        description='vLLM\'s field: `{"grammar": "<EBNF>"}` (xgrammar\'s EBNF, root rule `root`).',
    )
    return_tokens_as_token_ids: bool = Field(
        False, description='Logprobs name tokens as "token_id:123" instead of their text.'
    )

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_range(cls, value):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and not SEED_MIN <= value <= SEED_MAX:
            raise ValueError(
                f"seed must be an integer from {SEED_MIN} to {SEED_MAX} (64-bit signed)"
            )
        return value

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings")
        if not stops or any(not s for s in stops):
            raise ValueError("stop strings must not be empty (leave `stop` out for none)")
        return stops


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class ChosenFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: ChosenFunction


class ChatRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    # extra_body: answer from a knowledge base (RAG). `top_k` stays the sampling filter, so the
    # number of passages has its own name.
    # one name, or several searched as one (rag.service.KnowledgeBaseService.search_many)
    knowledge_base: str | list[str] | None = None
    retrieval_top_k: int | None = Field(None, ge=1, le=100)

    @field_validator("knowledge_base")
    @classmethod
    def _names_each_once(cls, value):
        if value is None:
            return value
        names = [value] if isinstance(value, str) else value
        try:
            check_kb_list(names)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
        if any(not 1 <= len(name) <= MAX_KB_NAME for name in names):
            raise ValueError(f"a knowledge base name has 1 to {MAX_KB_NAME} characters")
        return value

    @property
    def knowledge_bases(self) -> list[str]:
        """`knowledge_base` as a list (empty: none)."""
        kb = self.knowledge_base
        return [kb] if isinstance(kb, str) else kb or []


class CompletionRequest(SamplingFields):
    # token ids are strict: `true`/`1.5` are not token ids
    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]]
    # 0 is allowed here: with `echo`, the prompt's own logprobs and nothing new (lm-eval's
    # loglikelihood requests)
    max_tokens: int | None = Field(None, ge=0)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


#: OpenAI's limits on one embeddings request: 2048 inputs; 8192 (here: characters) each.
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_INPUT_CHARS = 8192

_EMBEDDING_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_EMBEDDING_INPUT_CHARS}


class EmbeddingRequest(BaseModel):
    """OpenAI's `POST /v1/embeddings` body. Token-id inputs are part of OpenAI's schema and
    refused with a 400 that says to send text (ids of another tokenizer mean nothing here)."""

    model_config = ConfigDict(extra="allow")

    # limits documented here, checked (with messages saying what to change) by the route
    input: (
        Annotated[str, WithJsonSchema(_EMBEDDING_TEXT)]
        | Annotated[
            list[str],
            WithJsonSchema(
                {
                    "type": "array",
                    "items": _EMBEDDING_TEXT,
                    "minItems": 1,
                    "maxItems": MAX_EMBEDDING_INPUTS,
                }
            ),
        ]
        | list[StrictInt]
        | list[list[StrictInt]]
    ) = Field(description="A text or a list of texts (token ids are refused).")
    model: str = Field(
        description="The KB embedder's name (a model folder's name, a hub name, `hashing`, or "
        "a remote model id), as answers name it; the id KBs record is accepted too."
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64`: each vector as little-endian float32 bytes, base64."
    )
    dimensions: StrictInt | None = Field(
        None, ge=1, description="Must equal the embedder's dimension when given (no shortening)."
    )
    user: str | None = None


# ------------------------------------------------------------------ responses


def _now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None

    @model_serializer(mode="wrap")
    def _no_empty_tool_calls(self, handler):
        data = handler(self)
        if data.get("tool_calls") is None:
            data.pop("tool_calls", None)  # an answer without calls does not name them
        return data


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobEntry] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Source(BaseModel):
    """One retrieved passage a RAG answer was given (`score`: higher is more relevant; with
    several knowledge bases, the score they were ranked together by)."""

    knowledge_base: str
    document_id: str
    filename: str
    chunk_index: int
    page: int | None = None
    score: float
    snippet: str


class RagChatCompletion(ChatCompletion):
    """A chat completion grounded in a knowledge base; `sources` is the openai client's
    `model_extra["sources"]`."""

    sources: list[Source]


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A streamed call: its first delta has the id, type and name, later ones the arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @model_serializer(mode="wrap")
    def _no_empty_tool_calls(self, handler):
        data = handler(self)
        if data.get("tool_calls") is None:
            data.pop("tool_calls", None)  # only deltas that carry calls name them
        return data


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class SourcesChunk(ChatChunk):
    """Sent once in a streamed RAG answer, after the last content chunk: no choices, the sources."""

    sources: list[Source]


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy shape: one entry per token in each list (with `echo`, the prompt's
    tokens first, the first of them with no logprob)."""

    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(
        description="The vector; a base64 string of little-endian float32 with `base64`."
    )


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "xiaophi"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every refusal: OpenAI's error body."""

    error: ErrorDetail
