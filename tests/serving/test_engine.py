"""The engine seam on its own: batching, queue limits, cancellation, sampling."""

from __future__ import annotations

import asyncio

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from serving.engine.base import EngineRequest, QueueFullError, SamplingParams
from serving.engine.hf_continuous import HFContinuousEngine


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint)).eval()
    return model, tokenizer


def run_with_engine(model_and_tokenizer, body, **engine_kwargs):
    model, tokenizer = model_and_tokenizer

    async def main():
        engine = HFContinuousEngine(model, tokenizer, warmup=False, **engine_kwargs)
        await engine.start()
        try:
            return await body(engine, tokenizer)
        finally:
            await engine.stop()

    return asyncio.run(main())


async def drain(stream) -> tuple[list[int], str, str]:
    tokens, text, reason = [], "", None
    async for delta in stream:
        tokens += delta.token_ids
        text += delta.text
        reason = delta.finish_reason or reason
    return tokens, text, reason


def prompt_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=False
    )


def test_concurrent_greedy_requests_match_generate(model_and_tokenizer, reference):
    prompts = [f"你好{i}" * (1 + i % 3) for i in range(6)]

    async def body(engine, tokenizer):
        streams = [
            engine.submit(
                EngineRequest(
                    f"r{i}",
                    prompt_ids(tokenizer, p),
                    SamplingParams(max_new_tokens=15, temperature=0),
                )
            )
            for i, p in enumerate(prompts)
        ]
        assert engine.stats().running == 4 and engine.stats().waiting == 2
        results = await asyncio.gather(*(drain(s) for s in streams))
        assert engine.stats().running == 0 and engine.stats().waiting == 0
        return results

    results = run_with_engine(model_and_tokenizer, body, max_running=4, max_waiting=4)
    for prompt, (tokens, _, _) in zip(prompts, results, strict=True):
        assert tokens == reference.greedy_ids(reference.chat_ids(prompt), 15)


def test_queue_full_and_cancelling_waiting_and_running(model_and_tokenizer):
    async def body(engine, tokenizer):
        params = SamplingParams(max_new_tokens=50, temperature=0)
        ids = prompt_ids(tokenizer, "你好")
        running = engine.submit(EngineRequest("a", ids, params))
        waiting = engine.submit(EngineRequest("b", ids, params))
        with pytest.raises(QueueFullError):
            engine.submit(EngineRequest("c", ids, params))
        assert engine.stats().running == 1 and engine.stats().waiting == 1
        await waiting.aclose()  # never iterated: still cancelled
        assert engine.stats().waiting == 0
        await engine.cancel("a")
        _, _, reason = await drain(running)
        assert reason == "cancelled"
        assert engine.stats().running == 0
        # the freed slot serves the next request
        return await drain(
            engine.submit(EngineRequest("d", ids, SamplingParams(max_new_tokens=3, temperature=0)))
        )

    tokens, _, reason = run_with_engine(model_and_tokenizer, body, max_running=1, max_waiting=1)
    assert reason in ("stop", "length") and 1 <= len(tokens) <= 3


def test_seeded_sampling_repeats_and_differs_by_seed(model_and_tokenizer):
    async def body(engine, tokenizer):
        ids = prompt_ids(tokenizer, "学而时习之")

        def params(seed):
            return SamplingParams(
                max_new_tokens=20,
                temperature=1.0,
                top_p=0.9,
                top_k=40,
                repetition_penalty=1.3,
                seed=seed,
            )

        together = await asyncio.gather(
            *(
                drain(engine.submit(EngineRequest(f"s{i}", ids, params(s))))
                for i, s in enumerate([1, 1, 2])
            )
        )
        return [t for t, _, _ in together]

    first, same_seed, other_seed = run_with_engine(model_and_tokenizer, body, max_running=4)
    assert first == same_seed
    assert first != other_seed
