"""The chat format every xiaophi checkpoint carries: special tokens and the Jinja chat template.

Serving, RAG and the trainers never build prompt strings by hand; they call
`tokenizer.apply_chat_template`, which reads the template saved with the tokenizer.
"""

BOS = "<|bos|>"
EOS = "<|endoftext|>"
PAD = "<|pad|>"
UNK = "<|unk|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# Order fixes the ids: 0..5. Pretraining uses BOS/EOS around documents; chat turns end in IM_END.
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, IM_START, IM_END]

#: What the model is told before the documents (RAG passages, dictionary entries). Short, because
#: every token of it is taken from the documents on a small model's context.
DOCUMENTS_INSTRUCTION = "请根据以下资料回答问题。"


#: What the model is told about tools, before their JSON signatures (one per line, inside <tools>),
#: and how to call one: the Hermes format, which vLLM's `--tool-call-parser hermes` reads too.
TOOLS_INSTRUCTION = "你可以调用以下工具（函数）来回答问题。\n<tools>"
TOOLS_FORMAT = (
    "\n</tools>\n需要调用时，每次调用输出一段：\n"
    '<tool_call>\n{"name": 函数名, "arguments": 参数对象}\n</tool_call>'
)
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


def documents_text(documents: list[dict]) -> str:
    """The system text the template renders for `documents` (`title` optional, `text` required):
    the instruction, then each document numbered from 1 under its title, blank lines between."""
    parts = [DOCUMENTS_INSTRUCTION]
    for number, doc in enumerate(documents, start=1):
        title = doc.get("title") or ""
        parts.append(f"[{number}] {title}\n{doc['text']}" if title else f"[{number}] {doc['text']}")
    return "\n\n".join(parts)


# ChatML-style turns. The assistant's content and its closing <|im_end|> sit inside
# {% generation %} so trl's assistant_only_loss trains on exactly those tokens, the end
# token included (the model must learn to stop).
#
# `documents` (transformers' `apply_chat_template(..., documents=[{"title", "text"}])`) are
# rendered in one place: a system turn holding `documents_text(documents)`, merged in front of
# the conversation's own system message when it opens with one. The RAG prompt format thus
# travels with the checkpoint like the rest of the chat format.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(context='') -%}"
    "{%- if documents -%}"
    "{%- set ns.context = '" + DOCUMENTS_INSTRUCTION + "' -%}"
    "{%- for doc in documents -%}"
    "{%- if doc['text'] is not defined or doc['text'] is not string -%}"
    "{{ raise_exception('every document needs a text field (a string)') }}"
    "{%- endif -%}"
    "{%- set title = doc['title'] if doc['title'] is defined and doc['title'] else '' -%}"
    "{%- set ns.context = ns.context + '\\n\\n[' + loop.index|string + '] '"
    " + (title + '\\n' if title else '') + doc['text'] -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- if tools -%}"
    "{%- set ns.context = (ns.context + '\\n\\n' if ns.context else '') + "
    + repr(TOOLS_INSTRUCTION)
    + " -%}"
    "{%- for tool in tools -%}"
    "{%- set fn = tool['function'] if tool['function'] is defined else tool -%}"
    "{%- set ns.context = ns.context + '\\n' + (fn | tojson) -%}"
    "{%- endfor -%}"
    "{%- set ns.context = ns.context + " + repr(TOOLS_FORMAT) + " -%}"
    "{%- endif -%}"
    "{%- if ns.context and (not messages or messages[0]['role'] != 'system') -%}"
    "{{ '<|im_start|>system\\n' + ns.context + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{ raise_exception('unknown role ' + message['role'] + '; use system, user, assistant or tool') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- generation -%}{{ message['content'] or '' }}"
    "{%- if message['tool_calls'] is defined and message['tool_calls'] -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{%- set args = fn['arguments'] if fn['arguments'] is defined else {} -%}"
    "{{ ('\\n' if (message['content'] or not loop.first) else '') + '<tool_call>\\n{\"name\": '"
    " + (fn['name'] | tojson) + ', \"arguments\": '"
    " + (args if args is string else args | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>' }}{%- endgeneration -%}"
    "{{ '\\n' }}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or loop.previtem['role'] != 'tool' -%}{{ '<|im_start|>user' }}{%- endif -%}"
    "{{ '\\n<tool_response>\\n' + (message['content'] or '') + '\\n</tool_response>' }}"
    "{%- if loop.last or loop.nextitem['role'] != 'tool' -%}{{ '<|im_end|>\\n' }}{%- endif -%}"
    "{%- elif loop.first and message['role'] == 'system' and ns.context -%}"
    "{{ '<|im_start|>system\\n' + ns.context + '\\n\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
