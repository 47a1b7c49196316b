"""The engine seam on its own: batching, queue limits, cancellation, sampling."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from serving.engine.base import EngineRequest, QueueFullError, SamplingParams
from serving.engine.hf_continuous import HFContinuousEngine
from serving.engine.slot_batching import SlotBatchingEngine

ENGINES = {"slots": SlotBatchingEngine, "hf-continuous": HFContinuousEngine}


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint)).eval()
    return model, tokenizer


@pytest.fixture(params=sorted(ENGINES))
def engine_class(request):
    return ENGINES[request.param]


def run_with_engine(engine_class, model_and_tokenizer, body, **engine_kwargs):
    model, tokenizer = model_and_tokenizer

    async def main():
        engine = engine_class(model, tokenizer, warmup=False, **engine_kwargs)
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


def test_concurrent_greedy_requests_match_generate(engine_class, model_and_tokenizer, reference):
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

    results = run_with_engine(engine_class, model_and_tokenizer, body, max_running=4, max_waiting=4)
    for prompt, (tokens, _, _) in zip(prompts, results, strict=True):
        assert tokens == reference.greedy_ids(reference.chat_ids(prompt), 15)


def test_queue_full_and_cancelling_waiting_and_running(engine_class, model_and_tokenizer):
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
        # the freed place serves the next request
        return await drain(
            engine.submit(EngineRequest("d", ids, SamplingParams(max_new_tokens=3, temperature=0)))
        )

    tokens, _, reason = run_with_engine(
        engine_class, model_and_tokenizer, body, max_running=1, max_waiting=1
    )
    assert reason in ("stop", "length") and 1 <= len(tokens) <= 3


def test_seeded_sampling_repeats_and_differs_by_seed(engine_class, model_and_tokenizer):
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

    first, same_seed, other_seed = run_with_engine(
        engine_class, model_and_tokenizer, body, max_running=4
    )
    assert first == same_seed
    assert first != other_seed


def test_requests_leaving_at_different_steps_keep_their_own_cache(
    engine_class, model_and_tokenizer, reference
):
    """Rows finish at different times (the last row moves into the gap) while others go on;
    a repetition penalty under greedy decoding matches `generate` with the same penalty."""
    prompts = [f"床前明月光{i}" * (1 + i % 4) for i in range(10)]
    budgets = [3, 17, 8, 25, 1, 12, 30, 5, 20, 9]

    async def body(engine, tokenizer):
        streams = [
            engine.submit(
                EngineRequest(
                    f"r{i}",
                    prompt_ids(tokenizer, p),
                    SamplingParams(
                        max_new_tokens=budgets[i],
                        temperature=0,
                        repetition_penalty=1.3 if i % 3 == 0 else 1.0,
                    ),
                )
            )
            for i, p in enumerate(prompts)
        ]
        return await asyncio.gather(*(drain(s) for s in streams))

    results = run_with_engine(engine_class, model_and_tokenizer, body, max_running=6)
    model = reference.model
    for i, (prompt, (tokens, _, reason)) in enumerate(zip(prompts, results, strict=True)):
        ids = reference.chat_ids(prompt)
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                max_new_tokens=budgets[i],
                do_sample=False,
                repetition_penalty=1.3 if i % 3 == 0 else 1.0,
            )
        assert tokens == out[0, len(ids) :].tolist(), f"request {i}"
        assert reason == ("length" if len(tokens) == budgets[i] else "stop")


def test_generation_ends_at_the_context_length(engine_class, model_and_tokenizer):
    model, _ = model_and_tokenizer
    context = model.config.max_position_embeddings

    async def body(engine, tokenizer):
        ids = prompt_ids(tokenizer, "长" * 10)
        filler = [ids[-1]] * (context - 4 - len(ids))
        request = EngineRequest("long", filler + ids, SamplingParams(max_new_tokens=context))
        return await drain(engine.submit(request)), len(filler + ids)

    (tokens, _, reason), prompt_length = run_with_engine(
        engine_class, model_and_tokenizer, body, max_running=2
    )
    assert prompt_length + len(tokens) <= context
    assert reason == "stop" or prompt_length + len(tokens) == context


def test_rows_leaving_early_in_every_order_keep_the_others_exact(model_and_tokenizer, reference):
    """Aborting a row that is not the last one moves the last row into its place (outside the
    batcher's forward pass): every order of three rows leaving early, while a fourth runs on,
    leaves each survivor's tokens equal to `generate`'s."""
    import itertools

    from serving.engine.slot_batching import Job, SlotBatcher

    model, tokenizer = model_and_tokenizer
    prompts = [f"春眠不觉晓{i}" * (1 + i) for i in range(4)]
    budget = 24
    expected = [reference.greedy_ids(prompt_ids(tokenizer, p), budget) for p in prompts]
    for order in itertools.permutations(range(3)):
        batcher = SlotBatcher(model, max_running=4)
        for i, p in enumerate(prompts):
            params = SamplingParams(max_new_tokens=budget, temperature=0)
            batcher.add(Job(f"r{i}", prompt_ids(tokenizer, p), params, seed=0))
        produced: dict[str, list[int]] = {f"r{i}": [] for i in range(4)}
        leaving = list(order)
        steps = 0
        while batcher.busy:
            for engine_id, token, *_ in batcher.step():
                produced[engine_id].append(token)
            steps += 1
            if leaving and steps % 3 == 0:
                batcher.abort({f"r{leaving.pop(0)}"})
        for i in range(4):
            tokens = produced[f"r{i}"]
            if i == 3:
                assert tokens == expected[i], f"order {order}: the row that stayed"
            else:
                assert tokens == expected[i][: len(tokens)], f"order {order}: row {i}"


def test_cancelled_and_stop_string_ends_while_others_run(
    engine_class, model_and_tokenizer, reference
):
    """Requests that end early (cancelled, or cut at a stop string) leave in every position of
    the batch while the others keep generating: the engine stays up and the others are exact."""
    prompts = [f"床前明月光{i}" * (1 + i % 3) for i in range(6)]
    budget = 30
    expected = [reference.greedy_ids(reference.chat_ids(p), budget) for p in prompts]
    texts = [reference.tokenizer.decode(e, skip_special_tokens=True) for e in expected]
    # a stop string a few characters into request 1's and request 4's answers
    stops = {i: texts[i][3:5] for i in (1, 4) if len(texts[i]) >= 5}
    assert stops, "the random model answers too briefly for a stop string: change the prompts"

    async def body(engine, tokenizer):
        streams = {}
        for i, p in enumerate(prompts):
            params = SamplingParams(
                max_new_tokens=budget, temperature=0, stop=[stops[i]] if i in stops else []
            )
            streams[i] = engine.submit(EngineRequest(f"r{i}", prompt_ids(tokenizer, p), params))

        async def cancel_after(i, tokens_before_cancel):
            tokens = []
            async for delta in streams[i]:
                tokens += delta.token_ids
                if len(tokens) >= tokens_before_cancel:
                    await engine.cancel(f"r{i}")
                if delta.finish_reason:
                    return tokens, delta.finish_reason
            return tokens, None

        results = await asyncio.gather(
            cancel_after(0, 2),
            drain(streams[1]),
            drain(streams[2]),
            cancel_after(3, 5),
            drain(streams[4]),
            drain(streams[5]),
        )
        assert engine.is_ready
        assert engine.stats().running == 0
        # the engine still serves
        after = await drain(
            engine.submit(
                EngineRequest(
                    "after",
                    prompt_ids(tokenizer, prompts[2]),
                    SamplingParams(max_new_tokens=budget, temperature=0),
                )
            )
        )
        return results, after

    results, after = run_with_engine(engine_class, model_and_tokenizer, body, max_running=6)
    for i in (0, 3):
        tokens, reason = results[i]
        assert reason in ("cancelled", "stop", "length"), reason
        assert tokens == expected[i][: len(tokens)]
    for i in (2, 5):
        tokens, _, reason = results[i]
        assert tokens == expected[i]
    for i in stops:
        _, text, reason = results[i]
        assert reason == "stop" and text == texts[i][: texts[i].find(stops[i])]
    assert after[0] == expected[2]


class PastKeyValuesForward:
    """The model as transformers 5.17 and earlier shape its forward: the cache argument is
    called `past_key_values` (a `cache=` keyword would reach the model twice and fail)."""

    def __init__(self, model) -> None:
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def forward(self, *, past_key_values=None, **kwargs):
        return self._model(cache=past_key_values, **kwargs)

    __call__ = forward


def test_the_batcher_hands_the_cache_over_under_the_forwards_own_name(
    model_and_tokenizer, reference
):
    from serving.engine.slot_batching import Job, SlotBatcher

    model, tokenizer = model_and_tokenizer
    prompts = ["你好", "学而时习之，不亦说乎。"]
    batcher = SlotBatcher(PastKeyValuesForward(model), max_running=2)
    produced: dict[str, list[int]] = {"a": [], "b": []}
    for engine_id, p in zip(produced, prompts, strict=True):
        params = SamplingParams(max_new_tokens=12, temperature=0)
        batcher.add(Job(engine_id, prompt_ids(tokenizer, p), params, seed=0))
    while batcher.busy:
        for engine_id, token, *_ in batcher.step():
            produced[engine_id].append(token)
    assert list(produced.values()) == [
        reference.greedy_ids(prompt_ids(tokenizer, p), 12) for p in prompts
    ]
