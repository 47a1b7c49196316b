"""Tool calls in a model's answer: Hermes blocks, `<tool_call>\\n{"name": ..., "arguments": ...}
\\n</tool_call>` (the format the chat template teaches, training/chat_format.py), read the way
vLLM's `--tool-call-parser hermes` reads them: the text before the first block is the content;
a block whose JSON does not parse leaves the whole answer as content, with no calls.

`ToolCallStream` does the same as text arrives: content goes out as soon as it cannot be the
start of a block, each call once its block is closed (or the answer ends)."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
_BLOCKS = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)


@dataclass
class ParsedCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass
class Parsed:
    content: str | None
    calls: list[ParsedCall] = field(default_factory=list)


def new_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def _call(block: str) -> ParsedCall:
    value = json.loads(block)
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ValueError("a tool call needs a name")
    arguments = value.get("arguments", {})
    return ParsedCall(new_call_id(), value["name"], json.dumps(arguments, ensure_ascii=False))


def parse_tool_calls(text: str) -> Parsed:
    """The content and the calls of a whole answer."""
    if OPEN not in text:
        return Parsed(text)
    try:
        calls = [_call(closed or open_) for closed, open_ in _BLOCKS.findall(text)]
    except (ValueError, TypeError):
        return Parsed(text)
    content = text[: text.index(OPEN)]
    return Parsed(content or None, calls)


def _partial_open(text: str) -> int:
    """How many characters at the end of `text` could begin `<tool_call>`."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if text.endswith(OPEN[:n]):
            return n
    return 0


class ToolCallStream:
    """One streamed answer: `push(text)` → (content to send now, calls completed now)."""

    def __init__(self) -> None:
        self._held = ""  # content that could be the start of a block, or an open block
        self._in_call = False
        self.sent_calls = 0

    def push(self, text: str) -> tuple[str, list[ParsedCall]]:
        self._held += text
        content, calls = "", []
        while True:
            if not self._in_call:
                start = self._held.find(OPEN)
                if start < 0:
                    keep = _partial_open(self._held)
                    if self.sent_calls == 0:  # after a call, text between blocks is dropped
                        content += self._held[: len(self._held) - keep]
                    self._held = self._held[len(self._held) - keep :]
                    break
                if self.sent_calls == 0:
                    content += self._held[:start]
                self._held = self._held[start + len(OPEN) :]
                self._in_call = True
            end = self._held.find(CLOSE)
            if end < 0:
                break
            block = self._held[:end]
            self._held = self._held[end + len(CLOSE) :]
            self._in_call = False
            try:
                calls.append(self._parse(block))
            except (ValueError, TypeError):  # not a call after all: it stays text
                if self.sent_calls == 0:
                    content += OPEN + block + CLOSE
        return content, calls

    def finish(self) -> tuple[str, list[ParsedCall]]:
        """The end of the answer: an open block is a call if its JSON parses."""
        held, self._held = self._held, ""
        if self._in_call:
            self._in_call = False
            try:
                return "", [self._parse(held)]
            except (ValueError, TypeError):
                return ("" if self.sent_calls else OPEN + held), []
        return ("" if self.sent_calls else held), []

    def _parse(self, block: str) -> ParsedCall:
        call = _call(block)
        self.sent_calls += 1
        return call


def uses_tools(request) -> bool:
    """Whether answers to `request` are read for tool calls (tools given, and not "none")."""
    return bool(request.tools) and request.tool_choice != "none"


def named_choice(request) -> bool:
    return request.tool_choice is not None and not isinstance(request.tool_choice, str)


def finish_reason(request, reason: str, called: bool) -> str:
    """As vLLM (and OpenAI) say it: "tool_calls" when calls were made under "auto" or
    "required"; a named tool_choice keeps the answer's own reason."""
    if called and not named_choice(request) and reason == "stop":
        return "tool_calls"
    if called and request.tool_choice in (None, "auto"):
        return "tool_calls"
    return reason


def template_renders_tools(tokenizer) -> bool:
    """Whether the checkpoint's chat template shows the model its tools."""
    probe = {"type": "function", "function": {"name": "xiaophi_probe_tool", "parameters": {}}}
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tools=[probe], tokenize=False
        )
    except Exception:  # noqa: BLE001 - a template that cannot take tools does not render them
        return False
    return "xiaophi_probe_tool" in text


def message_dict(message) -> dict:
    """A request message as the chat template takes it (`developer` is a system message)."""
    out: dict = {
        "role": "system" if message.role == "developer" else message.role,
        "content": message.text(),
    }
    if message.tool_calls:
        out["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def answer_message(request, text: str, reason: str) -> dict:
    """A whole answer's `message` and `finish_reason`, its tool calls read when tools are on."""
    from serving.schemas import AssistantMessage, FunctionCall, ToolCall

    if not uses_tools(request):
        return {"message": AssistantMessage(content=text), "finish_reason": reason}
    parsed = parse_tool_calls(text)
    calls = [
        ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
        for c in parsed.calls
    ]
    content = parsed.content
    if request.tool_choice == "required" or named_choice(request):
        content = content or ""  # vLLM's forced calls come with an empty content
    return {
        "message": AssistantMessage(content=content, tool_calls=calls or None),
        "finish_reason": finish_reason(request, reason, bool(calls)),
    }


def call_deltas(readers, index: int, calls: list[ParsedCall]):
    """Each completed call as OpenAI streams it: id, type and name first, then the arguments."""
    from serving.schemas import FunctionCallDelta, ToolCallDelta

    if readers is None:
        return
    first = readers[index].sent_calls - len(calls)  # the index of the first of these calls
    for n, call in enumerate(calls, start=first):
        yield [
            ToolCallDelta(
                index=n,
                id=call.id,
                type="function",
                function=FunctionCallDelta(name=call.name, arguments=""),
            )
        ]
        yield [ToolCallDelta(index=n, function=FunctionCallDelta(arguments=call.arguments))]
