"""What a `/v1/completions` request's prompts are: token ids from its text(s) or ids, and what
`echo` repeats of them."""

from __future__ import annotations

from serving.choice_streams import Choice
from serving.errors import InvalidRequestError
from serving.schemas import CompletionRequest, SamplingFields


def completion_prompts(prompt, tokenizer) -> list[list[int]]:
    """Each prompt's token ids: a string, a list of strings, token ids, or lists of them."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise InvalidRequestError("`prompt` is empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        prompt = [prompt]
    prompts = []
    for item in prompt:
        ids = tokenizer(item)["input_ids"] if isinstance(item, str) else list(item)
        if not ids:
            raise InvalidRequestError("a prompt is empty", param="prompt")
        if max(ids) >= len(tokenizer) or min(ids) < 0:
            raise InvalidRequestError("a prompt token id is outside the vocabulary", param="prompt")
        prompts.append(ids)
    return prompts


def echoed_text(request: CompletionRequest, choice: Choice, tokenizer) -> str:
    """What `echo` repeats for `choice`: its prompt as sent, or its token ids decoded."""
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    per_prompt = choice.index // request.n
    if per_prompt < len(prompts) and isinstance(prompts[per_prompt], str):
        return prompts[per_prompt]
    return tokenizer.decode(choice.prompt_ids)


def scores_only(request: SamplingFields) -> bool:
    """`echo` with `max_tokens: 0`: the prompt and its logprobs are the answer. vLLM still
    generates one token there, counts it in `usage` and gives its finish reason; so does this."""
    return isinstance(request, CompletionRequest) and request.echo and request.max_tokens == 0
