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

# ChatML-style turns. The assistant's content and its closing <|im_end|> sit inside
# {% generation %} so trl's assistant_only_loss trains on exactly those tokens, the end
# token included (the model must learn to stop).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown role ' + message['role'] + '; use system, user or assistant') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- generation -%}{{ message['content'] + '<|im_end|>' }}{%- endgeneration -%}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
