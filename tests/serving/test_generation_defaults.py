"""The checkpoint's generation_config.json fills what a request leaves out; RAG passes passages as
template documents, or in a system message for a template without document support."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from rag.models import SearchHit
from serving import rag_chat
from serving.generation_defaults import SamplingDefaults, read_sampling_defaults
from serving.metrics import ServingMetrics
from serving.schemas import ChatRequest
from serving.service import GenerationService

# The chat template before issue 16: no `documents` support (like many other models' templates).
OLD_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def with_generation_config(src, dest, **values):
    shutil.copytree(src, dest)
    path = dest / "generation_config.json"
    config = json.loads(path.read_text())
    config.update(values)
    path.write_text(json.dumps(config))
    return dest


def service(tokenizer, defaults=None) -> GenerationService:
    engine = SimpleNamespace(context_length=128)
    return GenerationService(
        engine, tokenizer, "tiny", ServingMetrics(lambda: None), defaults=defaults
    )


def request(**fields) -> ChatRequest:
    return ChatRequest(model="tiny", messages=[{"role": "user", "content": "你好"}], **fields)


def test_greedy_checkpoint_defaults_apply_and_a_requests_values_win(tiny_checkpoint, tmp_path):
    folder = with_generation_config(tiny_checkpoint, tmp_path / "m", repetition_penalty=1.3)
    defaults = read_sampling_defaults(folder)
    assert defaults == SamplingDefaults(temperature=0.0, repetition_penalty=1.3)  # do_sample false
    svc = service(AutoTokenizer.from_pretrained(str(folder)), defaults)
    params = svc.sampling_params(request(), prompt_len=10, max_tokens=8)
    assert params.greedy and params.repetition_penalty == 1.3
    own = svc.sampling_params(
        request(temperature=0.8, top_p=0.5, repetition_penalty=1.0, top_k=7), 10, 8
    )
    assert (own.temperature, own.top_p, own.repetition_penalty, own.top_k) == (0.8, 0.5, 1.0, 7)


def test_sampling_checkpoint_defaults(tiny_checkpoint, tmp_path):
    folder = with_generation_config(
        tiny_checkpoint, tmp_path / "m", do_sample=True, temperature=0.7, top_p=0.9, top_k=20
    )
    svc = service(AutoTokenizer.from_pretrained(str(folder)), read_sampling_defaults(folder))
    params = svc.sampling_params(request(), 10, 8)
    assert (params.temperature, params.top_p, params.top_k) == (0.7, 0.9, 20)
    assert svc.sampling_params(request(temperature=0), 10, 8).greedy


def test_without_a_generation_config_the_openai_defaults_apply(tiny_checkpoint, tmp_path):
    shutil.copytree(tiny_checkpoint, tmp_path / "m")
    (tmp_path / "m" / "generation_config.json").unlink()
    assert read_sampling_defaults(tmp_path / "m") == SamplingDefaults()
    assert read_sampling_defaults(None) == SamplingDefaults()


def hits() -> list[SearchHit]:
    return [
        SearchHit(
            knowledge_base="kb",
            chunk_id=f"c{i}",
            document_id=f"d{i}",
            filename=f"{name}.txt",
            chunk_index=0,
            page=None,
            score=1.0 - i / 10,
            text=text,
            start=0,
            end=len(text),
        )
        for i, (name, text) in enumerate(
            [("守株待兔", "比喻死守狭隘经验，不知变通。"), ("画蛇添足", "比喻做了多余的事。")]
        )
    ]


@pytest.mark.parametrize("native", [True, False])
def test_rag_prompt_is_the_same_with_template_documents_or_the_fallback(tiny_checkpoint, native):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    if not native:
        tokenizer.chat_template = OLD_TEMPLATE
    svc = service(tokenizer)
    assert svc.supports_documents is native
    messages = [{"role": "user", "content": "守株待兔是什么意思？"}]
    ids, used = rag_chat.fit_passages(svc._render, messages, hits(), 1000, documents=native)
    text = tokenizer.decode(ids)
    assert len(used) == 2
    assert text.startswith(
        "<|im_start|>system\n请根据以下资料回答问题。\n\n[1] 守株待兔.txt\n比喻死守狭隘经验，不知变通。"
        "\n\n[2] 画蛇添足.txt\n比喻做了多余的事。<|im_end|>\n<|im_start|>user\n守株待兔是什么意思？"
    )
