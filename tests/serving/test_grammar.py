"""Structured output's grammar layer (serving/engine/grammar*.py) with the real tiny byte-level
tokenizer and a random-weight model: what it lets through parses and validates, the stop tokens
wait for a complete answer, bad schemas are refused with a message that says what to fix."""

from __future__ import annotations

import inspect
import json
import pickle
import re

import jsonschema
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from serving.engine.grammar import (
    GrammarBatch,
    GrammarCompiler,
    GrammarMatcher,
    GrammarSpec,
    InvalidGrammarError,
    check,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"enum": ["是", "否"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "name": {"type": "string", "maxLength": 4},
        "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
        "note": {"anyOf": [{"type": "null"}, {"const": "好"}]},
    },
    "required": ["answer", "count", "name", "flags", "note"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 3}},
            "required": ["city"],
        },
    },
}
CONFIRM = {
    "type": "function",
    "function": {
        "name": "confirm",
        "parameters": {
            "type": "object",
            "properties": {
                "ok": {"enum": ["是", "否"]},
                "times": {"type": "integer", "maximum": 9},
            },
            "required": ["ok", "times"],
        },
    },
}
TOOL_CALL = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)
MAX_NEW = 90  # the tiny model's context is 128 tokens
SEEDS = range(5)  # 0: greedy; others: sampled


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    return tokenizer, model


@pytest.fixture(scope="module")
def stops(tiny) -> list[int]:
    eos = tiny[1].generation_config.eos_token_id
    return sorted(eos if isinstance(eos, list) else [eos])


@pytest.fixture(scope="module")
def compiler(tiny, stops) -> GrammarCompiler:
    tokenizer, model = tiny
    return GrammarCompiler(tokenizer, vocab_size=model.config.vocab_size, stop_token_ids=stops)


def allowed(matcher: GrammarMatcher, width: int) -> set[int]:
    row = torch.zeros(width)
    matcher.mask(row)
    return set(torch.isfinite(row).nonzero().flatten().tolist())


def decode(tiny, compiler, spec, seed: int) -> tuple[str, GrammarMatcher]:
    """Decode under the mask (greedy for seed 0, else sampled) until a stop token, the grammar's
    end, or MAX_NEW tokens; checks every step's mask on the way."""
    tokenizer, model = tiny
    matcher = compiler.matcher(spec)
    generator = torch.Generator().manual_seed(seed)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "请回答"}], add_generation_prompt=True, return_dict=False
    )
    out: list[int] = []
    step = torch.tensor([ids])
    # a KV cache, updated in place; transformers renamed the argument after 5.17
    cache_arg = (
        "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    )
    cache = {cache_arg: DynamicCache(config=model.config)}
    for _ in range(MAX_NEW):
        with torch.no_grad():
            logits = model(step, use_cache=True, **cache).logits[0, -1].float()
        matcher.mask(logits)
        finite = torch.isfinite(logits)
        assert not finite[len(tokenizer) :].any(), "a token past the tokenizer was allowed"
        stop_open = finite[list(compiler.stop_token_ids)].any().item()
        assert stop_open == matcher.accepts_end(), "stop tokens open only on a complete answer"
        if seed == 0:
            token = int(logits.argmax())
        else:
            token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        assert matcher.accept(token)
        if token in compiler.stop_token_ids:
            break
        step = torch.tensor([[token]])
        out.append(token)
        if matcher.is_finished():
            break
    return tokenizer.decode(out), matcher


@pytest.mark.parametrize("seed", SEEDS)
def test_schema_answers_parse_and_validate(tiny, compiler, seed):
    text, matcher = decode(tiny, compiler, GrammarSpec.json_schema(SCHEMA), seed)
    assert matcher.is_finished(), f"a bounded schema must finish in {MAX_NEW} tokens: {text!r}"
    value = json.loads(text)
    jsonschema.validate(value, SCHEMA)
    assert value["answer"] in ("是", "否")
    assert list(value) == list(SCHEMA["properties"])  # declared order, json.dumps separators
    assert text == json.dumps(value, ensure_ascii=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_json_object_is_an_object_or_an_unfinished_prefix(tiny, compiler, seed):
    text, matcher = decode(tiny, compiler, GrammarSpec.json_object(), seed)
    assert text.startswith("{")
    if matcher.accepts_end():
        assert isinstance(json.loads(text), dict)
    else:  # a random model wandered in a string until the bound: the answer is cut, not wrong
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)


@pytest.mark.parametrize("seed", SEEDS)
def test_named_tool_gives_one_call_to_that_function(tiny, compiler, seed):
    spec = GrammarSpec.from_tool_choice(
        [WEATHER, CONFIRM], {"type": "function", "function": {"name": "confirm"}}
    )
    text, matcher = decode(tiny, compiler, spec, seed)
    assert matcher.is_finished(), text
    assert TOOL_CALL.fullmatch(text), text
    call = json.loads(TOOL_CALL.fullmatch(text).group(1))
    assert call["name"] == "confirm"
    jsonschema.validate(call["arguments"], CONFIRM["function"]["parameters"])


@pytest.mark.parametrize("seed", SEEDS)
def test_required_tools_give_newline_separated_calls(tiny, compiler, seed):
    spec = GrammarSpec.from_tool_choice([WEATHER, CONFIRM], "required")
    text, matcher = decode(tiny, compiler, spec, seed)
    calls = TOOL_CALL.findall(text)
    assert calls, text  # the first call is bounded, so it is always complete
    for body in calls:
        call = json.loads(body)
        tool = {"get_weather": WEATHER, "confirm": CONFIRM}[call["name"]]
        jsonschema.validate(call["arguments"], tool["function"]["parameters"])
    complete = "\n".join(f"<tool_call>\n{body}\n</tool_call>" for body in calls)
    if matcher.accepts_end():
        assert text == complete
    else:
        assert text.startswith(complete + "\n<")


def test_one_call_when_parallel_calls_are_off(tiny, compiler):
    spec = GrammarSpec.from_tool_choice([WEATHER, CONFIRM], "required", parallel_tool_calls=False)
    for seed in SEEDS:
        text, matcher = decode(tiny, compiler, spec, seed)
        assert matcher.is_finished() and len(TOOL_CALL.findall(text)) == 1, text


def feed(matcher: GrammarMatcher, tokenizer, text: str) -> None:
    for token in tokenizer.encode(text, add_special_tokens=False):
        assert matcher.accept(token), (text, token)


def test_stop_tokens_wait_for_the_complete_answer(tiny, compiler, stops):
    tokenizer, model = tiny
    width = model.config.vocab_size
    answer = json.dumps({"ok": "否", "times": 3}, ensure_ascii=False)
    matcher = compiler.matcher(GrammarSpec.json_schema(CONFIRM["function"]["parameters"]))
    tokens = tokenizer.encode(answer, add_special_tokens=False)
    for token in tokens:
        assert not allowed(matcher, width) & set(stops)
        assert not matcher.accepts_end() and not matcher.is_finished()
        assert not matcher.accept(stops[0])  # refused, and the state is unchanged
        assert matcher.accept(token)
    assert allowed(matcher, width) == set(stops)  # complete: nothing but a stop token
    assert matcher.accepts_end() and matcher.is_finished()
    assert matcher.accept(stops[-1]) and matcher.is_finished()


def test_a_number_at_the_end_may_grow_so_it_is_not_finished(tiny, compiler, stops):
    tokenizer, model = tiny
    matcher = compiler.matcher(GrammarSpec.json_schema({"type": "integer"}))
    feed(matcher, tokenizer, "12")
    assert matcher.accepts_end() and not matcher.is_finished()
    assert set(stops) < allowed(matcher, model.config.vocab_size)


def test_wrong_tokens_are_refused(tiny, compiler):
    tokenizer, _ = tiny
    matcher = compiler.matcher(GrammarSpec.json_schema(SCHEMA))
    assert not matcher.accept(tokenizer.encode("[", add_special_tokens=False)[0])
    feed(matcher, tokenizer, '{"answer": "')
    assert not matcher.accept(tokenizer.encode("不", add_special_tokens=False)[0])


def test_padded_vocabulary_and_special_tokens_are_never_allowed(tiny, compiler, stops):
    tokenizer, model = tiny
    width = model.config.vocab_size
    assert width > len(tokenizer)  # the tiny model pads its vocabulary, as real ones do
    matcher = compiler.matcher(GrammarSpec.json_schema({"type": "string"}))
    feed(matcher, tokenizer, '"ab')
    inside = allowed(matcher, width)
    assert len(inside) > 100 and max(inside) < len(tokenizer)
    assert not inside & set(tokenizer.all_special_ids)
    # a compiler that only knows the tokenizer still masks a wider logits row whole
    narrow = GrammarCompiler(tokenizer, stop_token_ids=stops)
    assert narrow.vocab_size == len(tokenizer)
    other = narrow.matcher(GrammarSpec.json_schema({"type": "string"}))
    feed(other, tokenizer, '"ab')
    assert allowed(other, width) == inside


def test_no_raw_control_characters_in_length_bounded_strings(tiny, compiler):
    """xgrammar 0.2.9 lets \\x00-\\x1f into strings with maxLength; json.loads refuses them."""
    tokenizer, model = tiny
    matcher = compiler.matcher(GrammarSpec.json_schema({"type": "string", "maxLength": 5}))
    feed(matcher, tokenizer, '"')
    decoded = compiler.info.decoded_vocab
    for token in allowed(matcher, model.config.vocab_size):
        assert not any(byte < 0x20 for byte in decoded[token]), decoded[token]


def test_chinese_enum_through_byte_level_tokens(tiny, compiler):
    tokenizer, model = tiny
    decoded = compiler.info.decoded_vocab
    spec = GrammarSpec.json_schema({"enum": ["是", "否"]})
    merged = compiler.matcher(spec)
    feed(merged, tokenizer, '"是"')
    assert merged.is_finished()
    # the same character spelled one byte token at a time
    by_byte = compiler.matcher(spec)
    byte_tokens = [decoded.index(bytes([b])) for b in "是".encode()]
    assert by_byte.accept(decoded.index(b'"'))
    for token in byte_tokens:
        assert by_byte.accept(token)
    assert by_byte.accept(decoded.index(b'"')) and by_byte.is_finished()
    assert tokenizer.decode([decoded.index(b'"'), *byte_tokens, decoded.index(b'"')]) == '"是"'
    wrong = compiler.matcher(spec)
    assert wrong.accept(decoded.index(b'"'))
    assert not wrong.accept(decoded.index("不".encode()[:1]))  # 否 starts E5, 是 E6


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "strnig"}, "not a valid JSON Schema"),
        ({"type": "string", "minLength": -1}, "not a valid JSON Schema"),
        ("{not json", "not valid JSON text"),
        (["a"], "must be a JSON Schema object"),
        (False, "no value satisfies"),
        ({"type": "string", "pattern": "(unclosed"}, "is not a 'regex'"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/gone"}}}, "$defs"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum greater than maximum"),
        ({"not": {"type": "string"}}, "`not` is not supported"),
        ({"type": "object", "properties": {"a": {"not": {}}}}, "#/properties/a"),
        ({"type": "number", "multipleOf": 0.5}, "only with `type: integer`"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"allOf": [{"type": "integer"}, {"maximum": 3}]}, "merge them"),
        ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "put the length in the pattern"),
        ({"type": "object", "properties": {}, "required": ["b"]}, "declare each required"),
    ],
)
def test_bad_schemas_are_refused_with_the_fix(schema, message):
    with pytest.raises(InvalidGrammarError) as caught:
        check(GrammarSpec.json_schema(schema))
    assert isinstance(caught.value, ValueError)
    assert caught.value.param == "response_format"
    assert message in str(caught.value), str(caught.value)


def test_keywords_that_look_like_property_names_are_fine():
    schema = {
        "type": "object",
        "properties": {"not": {"type": "string"}, "if": {"type": "integer"}},
    }
    check(GrammarSpec.json_schema(schema))
    check(GrammarSpec.json_schema({"const": {"not": 1}}))


def test_tool_and_format_requests_are_refused_with_their_field():
    with pytest.raises(InvalidGrammarError) as caught:
        GrammarSpec.from_tool_choice([WEATHER], {"type": "function", "function": {"name": "x"}})
    assert caught.value.param == "tool_choice" and "get_weather" in caught.value.message
    with pytest.raises(InvalidGrammarError) as caught:
        GrammarSpec.from_tool_choice([], "required")
    assert caught.value.param == "tools"
    bad_tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}
    with pytest.raises(InvalidGrammarError) as caught:
        check(GrammarSpec.from_tool_choice([WEATHER, bad_tool], "required"))
    assert caught.value.param == "tools" and "'f'" in caught.value.message
    with pytest.raises(InvalidGrammarError, match="json_schema.schema is required"):
        GrammarSpec.from_response_format({"type": "json_schema", "json_schema": {"name": "x"}})
    with pytest.raises(InvalidGrammarError, match="not supported"):
        GrammarSpec.from_response_format({"type": "yaml"})


def test_request_fields_to_specs():
    assert GrammarSpec.from_response_format(None) is None
    assert GrammarSpec.from_response_format({"type": "text"}) is None
    assert GrammarSpec.from_response_format({"type": "json_object"}) == GrammarSpec.json_object()
    body = {"name": "a", "schema": SCHEMA, "strict": True}
    spec = GrammarSpec.from_response_format({"type": "json_schema", "json_schema": body})
    assert spec == GrammarSpec.json_schema(json.dumps(SCHEMA, indent=2))  # canonical JSON
    assert GrammarSpec.from_tool_choice([WEATHER], "auto") is None
    assert GrammarSpec.from_tool_choice([WEATHER], "none") is None
    named = GrammarSpec.from_tool_choice([WEATHER, CONFIRM], {"function": {"name": "confirm"}})
    assert [name for name, _ in named.tools] == ["confirm"] and not named.parallel
    bare = GrammarSpec.tool_calls([{"name": "ping"}], parallel=False)  # no parameters: {}
    assert json.loads(bare.tools[0][1]) == {"type": "object", "properties": {}}


def test_the_tool_call_without_parameters(tiny, compiler):
    tokenizer, _ = tiny
    matcher = compiler.matcher(GrammarSpec.tool_calls([{"name": "ping"}], parallel=False))
    feed(matcher, tokenizer, '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>')
    assert matcher.is_finished()


def test_compiled_grammars_are_cached_by_canonical_schema(tiny, stops):
    tokenizer, model = tiny
    compiler = GrammarCompiler(
        tokenizer, vocab_size=model.config.vocab_size, stop_token_ids=stops, cache_size=2
    )
    first = compiler.compile(GrammarSpec.json_schema(SCHEMA))
    assert compiler.compile(GrammarSpec.json_schema(json.dumps(SCHEMA, indent=4))) is first
    reordered = dict(reversed(list(SCHEMA.items())))  # same keywords: the same grammar
    assert compiler.compile(GrammarSpec.json_schema(reordered)) is not first  # another key
    assert compiler.compile(GrammarSpec.json_schema(SCHEMA)) is first  # used last: kept
    compiler.compile(GrammarSpec.json_object())
    assert compiler.cache_len() == 2
    assert compiler.compile(GrammarSpec.json_schema(SCHEMA)) is first
    compiler.compile(GrammarSpec.json_schema(reordered))  # evicts json_object, not SCHEMA
    assert compiler.compile(GrammarSpec.json_schema(SCHEMA)) is first


def test_specs_pickle_into_another_process(tiny, compiler):
    tokenizer, _ = tiny
    spec = GrammarSpec.from_tool_choice([WEATHER, CONFIRM], "required")
    copy = pickle.loads(pickle.dumps(spec))
    assert copy == spec and hash(copy) == hash(spec)
    assert compiler.compile(copy) is compiler.compile(spec)
    feed(compiler.matcher(copy), tokenizer, '<tool_call>\n{"name": "get_weather", "arguments": {')


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_masks_equal_row_masks(tiny, compiler, threads):
    tokenizer, model = tiny
    width = model.config.vocab_size
    a = compiler.matcher(GrammarSpec.json_schema(SCHEMA))
    b = compiler.matcher(GrammarSpec.json_object())
    feed(b, tokenizer, '{"k": "')
    logits = torch.randn(3, width)
    expected = logits.clone()
    a.mask(expected[0])
    b.mask(expected[2])
    batch = GrammarBatch(width, max_threads=threads)
    batch.mask(logits, [a, None, b])
    assert torch.equal(logits, expected)
    many = torch.randn(20, width)  # more rows than the first bitmask holds
    untouched = many.clone()
    batch.mask(many, [None] * 19 + [a])
    assert torch.equal(many[:19], untouched[:19])
    assert torch.isfinite(many[19]).sum() < width


def test_other_dtypes_mask_the_same(tiny, compiler):
    tokenizer, model = tiny
    matcher = compiler.matcher(GrammarSpec.json_schema(SCHEMA))
    feed(matcher, tokenizer, '{"answer": "是", "count": 1')
    rows = {
        dtype: torch.zeros(model.config.vocab_size, dtype=dtype)
        for dtype in (torch.float32, torch.bfloat16, torch.float64)
    }
    for row in rows.values():
        matcher.mask(row)
    kept = {dtype: torch.isfinite(row).nonzero().flatten().tolist() for dtype, row in rows.items()}
    assert kept[torch.float32] == kept[torch.bfloat16] == kept[torch.float64]
    digits_or_comma = {tokenizer.decode([t]) for t in kept[torch.float32]}
    assert "," in digits_or_comma and "0" in digits_or_comma
