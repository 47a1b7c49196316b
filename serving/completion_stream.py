"""The chunks of a streamed `/v1/completions` answer (`GenerationService.stream_complete`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from serving.choice_streams import Choice, merge_choices, public_reason
from serving.completion_prompts import echoed_text, scores_only
from serving.logprob_views import completion_logprobs_builder
from serving.schemas import Completion, CompletionChoice, CompletionRequest


async def completion_chunks(
    service, rid: str, choices: list[Choice], request: CompletionRequest
) -> AsyncIterator[Completion]:
    """A completions request's chunks: per choice its echoed prompt (with its logprobs) first,
    then the continuation's text and logprobs as they come, then usage if asked."""
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    completion_tokens = 0
    builders = {c.index: completion_logprobs_builder(request, service.token_texts) for c in choices}
    sent = dict.fromkeys(builders, 0)  # characters of text sent per choice
    echoed: set[int] = set()
    answering: set[int] = set()  # choices whose answer's logprobs started
    scoring = scores_only(request)

    def chunk(index: int, text: str, finish: str | None, logprobs) -> Completion:
        sent[index] += len(text)
        return Completion(
            id=rid,
            model=service.model_name,
            choices=[
                CompletionChoice(index=index, text=text, finish_reason=finish, logprobs=logprobs)
            ],
        )

    async with contextlib.aclosing(merge_choices(choices)) as deltas:
        async for index, delta in deltas:
            builder = builders[index]
            if request.echo and index not in echoed:  # the prompt, before its continuation
                echoed.add(index)
                choice = choices[index]
                prompt_logprobs = None
                if builder is not None:
                    prompt_logprobs = builder.add(choice.prompt_ids, delta.prompt_logprobs, 0)
                yield chunk(
                    index, echoed_text(request, choice, service.tokenizer), None, prompt_logprobs
                )
            finish = None
            if delta.finish_reason is not None:
                completion_tokens += delta.completion_tokens
                finish = public_reason(delta)
            if scoring:  # the one token generated is not part of the answer (as in vLLM)
                if finish:
                    yield chunk(index, "", finish, None)
                continue
            logprobs = None
            if builder is not None and delta.token_ids:
                first = index not in answering
                answering.add(index)
                logprobs = builder.add(delta.token_ids, delta.logprobs, sent[index], first)
            if delta.text or finish or logprobs:
                yield chunk(index, delta.text, finish, logprobs)
    if include_usage:
        yield Completion(
            id=rid,
            model=service.model_name,
            choices=[],
            usage=service.usage_of(choices, completion_tokens),
        )
