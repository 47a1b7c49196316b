"""Chat and text completions on top of an `Engine`: prompts, limits, choices, usage.

Knows nothing of HTTP: `chat` / `complete` return response models, `stream_chat` /
`stream_complete` return streams of chunks, and refusals are the error types of errors.py
(which maps them to status codes).
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable

import anyio

from rag.service import KnowledgeBaseService
from serving import rag_chat
from serving.choice_streams import (
    Choice,
    ChunkStream,
    Outcome,
    close_soon,
    collect_outcomes,
    merge_choices,
    public_reason,
)
from serving.completion_prompts import completion_prompts, echoed_text, scores_only
from serving.completion_stream import completion_chunks
from serving.engine.base import (
    Engine,
    EngineRequest,
    SamplingParams,
)
from serving.errors import (
    ContextLengthError,
    InvalidRequestError,
    ModelNotFoundError,
)
from serving.generation_defaults import SamplingDefaults
from serving.logprob_views import (
    TokenTexts,
    chat_logprobs,
    chat_logprobs_builder,
    completion_logprobs_builder,
)
from serving.metrics import ServingMetrics
from serving.request_checks import check_token_ids, request_grammar
from serving.schemas import (
    ChatChoice,
    ChatChunk,
    ChatChunkChoice,
    ChatCompletion,
    ChatDelta,
    ChatLogprobs,
    ChatRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    RagChatCompletion,
    SamplingFields,
    Source,
    SourcesChunk,
    Usage,
)
from serving.tool_calls import (
    ToolCallStream,
    answer_message,
    call_deltas,
    message_dict,
    template_renders_tools,
    uses_tools,
)
from serving.tool_calls import finish_reason as tool_finish_reason


class GenerationService:
    def __init__(
        self,
        engine: Engine,
        tokenizer,
        model_name: str,
        metrics: ServingMetrics,
        max_n: int = 8,
        knowledge: Callable[[], KnowledgeBaseService] | None = None,
        defaults: SamplingDefaults | None = None,
    ) -> None:
        self.engine = engine
        # what a request leaves out comes from the checkpoint's generation_config.json
        self.defaults = defaults or SamplingDefaults()
        self.supports_documents = rag_chat.template_renders_documents(tokenizer)
        self.supports_tools = template_renders_tools(tokenizer)
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.metrics = metrics
        self.max_n = max_n
        self.knowledge = knowledge  # the knowledge-base service, for `knowledge_base` requests
        self.token_texts = TokenTexts(tokenizer)  # for logprobs

    # ------------------------------------------------------------------ chat
    async def chat(self, request: ChatRequest) -> ChatCompletion:
        """The whole answer; a `RagChatCompletion`, with its sources, for a knowledge base."""
        rid, choices, sources = await self._start_chat(request)
        outcomes, usage = await self._collect(choices)
        answer = ChatCompletion(
            id=rid,
            model=self.model_name,
            choices=[
                ChatChoice(
                    index=i,
                    **answer_message(request, outcome.text, outcome.reason),
                    logprobs=chat_logprobs(
                        chat_logprobs_builder(request, self.token_texts), outcome.logprobs
                    ),
                )
                for i, outcome in enumerate(outcomes)
            ],
            usage=usage,
        )
        if sources is None:
            return answer
        return RagChatCompletion(**answer.model_dump(), sources=sources)

    async def stream_chat(self, request: ChatRequest) -> ChunkStream[ChatChunk]:
        """The answer's chunks (every choice is queued before this returns)."""
        rid, choices, sources = await self._start_chat(request)
        return ChunkStream(self._chat_chunks(rid, choices, request, sources), choices)

    async def _start_chat(
        self, request: ChatRequest
    ) -> tuple[str, list[Choice], list[Source] | None]:
        """Check, render and queue a chat request: its id, its choices, its RAG sources."""
        self._check_common(request)
        if request.top_logprobs is not None and not request.logprobs:
            raise InvalidRequestError("`top_logprobs` needs `logprobs: true`", param="top_logprobs")
        tools = None
        if request.tools:
            if not self.supports_tools:
                raise InvalidRequestError(
                    "this model's chat template does not show tools to the model; serve a "
                    "checkpoint trained with xiaophi's tool format, or leave `tools` out",
                    param="tools",
                )
            tools = [tool.model_dump(exclude_none=True) for tool in request.tools]
        elif request.tool_choice not in (None, "none"):
            raise InvalidRequestError("`tool_choice` needs `tools`", param="tool_choice")
        max_tokens = request.max_completion_tokens or request.max_tokens
        messages = [message_dict(m) for m in request.messages]
        sources: list[Source] | None = None
        render = functools.partial(self._render, tools=tools)
        if request.knowledge_base is not None:
            prompt, sources = await self._rag_prompt(request, messages, max_tokens, render)
        else:
            prompt = render(messages)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        return rid, self._submit(rid, [prompt] * request.n, request, max_tokens), sources

    async def _rag_prompt(
        self, request: ChatRequest, messages: list[dict], max_tokens: int | None, render
    ) -> tuple[list[int], list[Source]]:
        """Search the knowledge base(s) for the last user message; passages go in the prompt."""
        if self.knowledge is None:
            raise InvalidRequestError("this server has no knowledge bases", param="knowledge_base")
        query = rag_chat.retrieval_query(messages)
        kbs = self.knowledge()
        # unknown KB (404), missing embedder (503) etc. surface here, before any stream starts
        hits = await anyio.to_thread.run_sync(
            kbs.search_many, request.knowledge_bases, query, request.retrieval_top_k
        )
        budget = self.engine.context_length - rag_chat.answer_reserve(
            self.engine.context_length, max_tokens
        )
        prompt, used = rag_chat.fit_passages(
            render, messages, hits, budget, documents=self.supports_documents
        )
        return prompt, [rag_chat.source_of(hit) for hit in used]

    def _render(
        self,
        messages: list[dict],
        documents: list[dict[str, str]] | None = None,
        tools: list[dict] | None = None,
    ) -> list[int]:
        """Token ids of `messages` through the tokenizer's chat template.

        Message content (and the passages RAG puts in a system message) is always text: a
        special-token string inside it, such as a forged `<|im_end|>`, is encoded as ordinary
        characters, so only the markers the template itself writes become control tokens.
        """
        try:
            ids = self.tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=True,
                return_dict=False,
                sanitize_control_tokens=True,
                **({"documents": documents} if documents else {}),
                **({"tools": tools} if tools else {}),
            )
        except Exception as exc:  # the template raises on what it cannot render
            raise InvalidRequestError(
                f"cannot apply the chat template: {exc}", param="messages"
            ) from exc
        return list(ids)

    async def _chat_chunks(
        self,
        rid: str,
        choices: list[Choice],
        request: ChatRequest,
        sources: list[Source] | None = None,
    ) -> AsyncIterator[ChatChunk]:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)

        def chunk(
            index: int,
            delta: ChatDelta,
            finish: str | None = None,
            logprobs: ChatLogprobs | None = None,
        ) -> ChatChunk:
            return ChatChunk(
                id=rid,
                model=self.model_name,
                choices=[
                    ChatChunkChoice(
                        index=index, delta=delta, finish_reason=finish, logprobs=logprobs
                    )
                ],
            )

        for choice in choices:
            yield chunk(choice.index, ChatDelta(role="assistant", content=""))
        builders = {c.index: chat_logprobs_builder(request, self.token_texts) for c in choices}
        # tool calls read from each choice's text as it comes
        readers = {c.index: ToolCallStream() for c in choices} if uses_tools(request) else None
        completion_tokens = 0
        async with contextlib.aclosing(merge_choices(choices)) as deltas:
            async for index, delta in deltas:
                logprobs = chat_logprobs(builders[index], delta.logprobs)
                text, calls = delta.text, []
                if readers is not None:
                    text, calls = readers[index].push(delta.text)
                    if delta.finish_reason is not None:
                        tail, more = readers[index].finish()
                        text, calls = text + tail, calls + more
                if text or (logprobs and logprobs.content):
                    yield chunk(index, ChatDelta(content=text), logprobs=logprobs)
                for delta_calls in call_deltas(readers, index, calls):
                    yield chunk(index, ChatDelta(tool_calls=delta_calls))
                if delta.finish_reason is not None:
                    completion_tokens += delta.completion_tokens
                    reason = public_reason(delta)
                    if readers is not None:
                        called = readers[index].sent_calls > 0
                        reason = tool_finish_reason(request, reason, called)
                    yield chunk(index, ChatDelta(), reason)
        if sources is not None:
            yield SourcesChunk(id=rid, model=self.model_name, choices=[], sources=sources)
        if include_usage:
            yield ChatChunk(
                id=rid,
                model=self.model_name,
                choices=[],
                usage=self.usage_of(choices, completion_tokens),
            )

    # ------------------------------------------------------------------ completions
    async def complete(self, request: CompletionRequest) -> Completion:
        """The whole continuation of every prompt."""
        rid, choices = self._start_completion(request)
        outcomes, usage = await self._collect(choices)
        answers = []
        scoring = scores_only(request)
        for choice, outcome in zip(choices, outcomes, strict=True):
            text, logprobs = ("" if scoring else outcome.text), None
            builder = completion_logprobs_builder(request, self.token_texts)
            if request.echo:
                text = echoed_text(request, choice, self.tokenizer) + text
                if builder is not None:
                    builder.add(choice.prompt_ids, outcome.prompt_logprobs)
            if builder is not None:
                if not scoring:
                    builder.add(outcome.token_ids, outcome.logprobs, new_section=True)
                logprobs = builder.whole
            answers.append(
                CompletionChoice(
                    index=choice.index, text=text, finish_reason=outcome.reason, logprobs=logprobs
                )
            )
        return Completion(id=rid, model=self.model_name, choices=answers, usage=usage)

    async def stream_complete(self, request: CompletionRequest) -> ChunkStream[Completion]:
        """The continuations' chunks (every choice is queued before this returns)."""
        rid, choices = self._start_completion(request)
        return ChunkStream(completion_chunks(self, rid, choices, request), choices)

    def _start_completion(self, request: CompletionRequest) -> tuple[str, list[Choice]]:
        """Check, tokenize and queue a completion request: its id and its choices."""
        self._check_common(request)
        if request.suffix:
            raise InvalidRequestError("`suffix` is not supported", param="suffix")
        if request.best_of not in (None, 1):
            raise InvalidRequestError("`best_of` is not supported", param="best_of")
        prompts = completion_prompts(request.prompt, self.tokenizer)
        if len(prompts) * request.n > self.max_n:
            raise InvalidRequestError(
                f"at most {self.max_n} choices (prompts × n) per request", param="n"
            )
        rid = f"cmpl-{uuid.uuid4().hex}"
        # choices are ordered prompt by prompt, n per prompt (as OpenAI does)
        choices = self._submit(
            rid, [p for p in prompts for _ in range(request.n)], request, request.max_tokens
        )
        return rid, choices

    # ------------------------------------------------------------------ shared
    def _check_common(self, request: SamplingFields) -> None:
        if request.model != self.model_name:
            raise ModelNotFoundError(
                f"The model `{request.model}` does not exist; this server serves `{self.model_name}`.",
                param="model",
                code="model_not_found",
            )
        if request.n > self.max_n:
            raise InvalidRequestError(f"`n` must be at most {self.max_n}", param="n")
        check_token_ids(request, len(self.tokenizer))

    def sampling_params(
        self, request: SamplingFields, prompt_len: int, max_tokens: int | None
    ) -> SamplingParams:
        remaining = self.engine.context_length - prompt_len
        if remaining < 1:
            raise ContextLengthError(
                f"The prompt has {prompt_len} tokens; this model's context is {self.engine.context_length} "
                "tokens and needs room for at least one more.",
                param="messages" if isinstance(request, ChatRequest) else "prompt",
                code="context_length_exceeded",
            )
        d = self.defaults
        if isinstance(request, ChatRequest):
            logprobs = (request.top_logprobs or 0) if request.logprobs else None
            prompt_logprobs = None
        else:
            logprobs = request.logprobs
            prompt_logprobs = logprobs if request.echo else None
            if scores_only(request):
                max_tokens = 1  # as vLLM does: one token, counted and then left out
        return SamplingParams(
            max_new_tokens=remaining if max_tokens is None else min(max_tokens, remaining),
            temperature=d.temperature if request.temperature is None else request.temperature,
            top_p=d.top_p if request.top_p is None else request.top_p,
            top_k=d.top_k if request.top_k is None else request.top_k,
            repetition_penalty=(
                d.repetition_penalty
                if request.repetition_penalty is None
                else request.repetition_penalty
            ),
            seed=request.seed,
            stop=list(request.stop or []),
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            logit_bias={int(k): v for k, v in (request.logit_bias or {}).items()},
            min_p=request.min_p or 0.0,
            min_tokens=request.min_tokens,
            ignore_eos=request.ignore_eos,
            stop_token_ids=list(request.stop_token_ids or []),
            include_stop_str_in_output=request.include_stop_str_in_output,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
        )

    def _submit(
        self, rid: str, prompts: list[list[int]], request: SamplingFields, max_tokens: int | None
    ) -> list[Choice]:
        """Queue every choice at once; on any refusal cancel those already queued."""
        params = [self.sampling_params(request, len(p), max_tokens) for p in prompts]
        grammar = request_grammar(request)
        for param in params:
            param.grammar = grammar
        arrived = time.perf_counter()
        choices: list[Choice] = []
        try:
            for index, (prompt, param) in enumerate(zip(prompts, params, strict=True)):
                if param.seed is not None:
                    param.seed += (
                        index  # n seeded choices differ from each other but repeat across calls
                    )
                stream = self.engine.submit(EngineRequest(f"{rid}-{index}", prompt, param))
                choices.append(
                    Choice(index, prompt, self.metrics.track(stream, len(prompt), arrived))
                )
        except Exception:
            for choice in choices:
                close_soon(choice.stream)
            raise
        return choices

    async def _collect(self, choices: list[Choice]) -> tuple[list[Outcome], Usage]:
        outcomes, completion_tokens = await collect_outcomes(choices)
        return outcomes, self.usage_of(choices, completion_tokens)

    def usage_of(self, choices: list[Choice], completion_tokens: int) -> Usage:
        # n choices of one prompt share it: OpenAI counts the prompt once per distinct prompt
        prompt_tokens = sum(len(p) for p in {tuple(c.prompt_ids): None for c in choices})
        return Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
