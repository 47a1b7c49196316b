"""Clean text deltas: whole characters only; stop strings held back and cut."""

from __future__ import annotations

from serving.engine.text_stream import IncrementalDetokenizer, StopStringMatcher, TextStream


def test_multibyte_characters_are_never_split(reference):
    tokenizer = reference.tokenizer
    text = "龘靐齉你好"  # rare characters: byte-level pieces in the tiny vocabulary
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text)  # some characters do span several tokens
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push([i]) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_stop_matcher_holds_partial_matches_and_cuts():
    matcher = StopStringMatcher(["STOP", "。。"])
    out = [matcher.push(p) for p in ["ab", "cS", "T", "x", "yST", "OPzz"]]
    assert [r.text for r in out] == ["ab", "c", "", "STx", "y", ""]
    assert [r.stopped for r in out] == [False] * 5 + [True]


def test_stop_matcher_flushes_an_unfinished_partial_at_the_end():
    matcher = StopStringMatcher(["STOP"])
    assert matcher.push("abST").text == "ab"
    assert matcher.flush() == "ST"


def test_text_stream_stops_inside_one_token(reference):
    tokenizer = reference.tokenizer
    ids = tokenizer("你好！很高兴认识你。", add_special_tokens=False)["input_ids"]
    stream = TextStream(tokenizer, stop=["高兴"])
    emitted, stopped = "", False
    for token in ids:
        result = stream.push([token])
        emitted += result.text
        if result.stopped:
            stopped = True
            break
    assert stopped and emitted == "你好！很"
