"""`xiaophi-train export gguf`, checked with llama.cpp itself (llama-cpp-python, built from its
sdist): for every architecture a recipe can choose, tied and untied heads, llama.cpp reads the
file's tokenizer token for token like the checkpoint's and generates the checkpoint's greedy
tokens; bad input is refused with the reason."""

from __future__ import annotations

import json
import re
import shutil

import llama_cpp  # a dev dependency: llama.cpp, built from llama-cpp-python's sdist
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.gguf_bench import NEW_TOKENS, gguf_greedy, hf_greedy
from tests.conftest import build_tiny_checkpoint
from training.cli import main as cli_main
from training.export_gguf import (
    OLLAMA_TEMPLATE,
    ExportError,
    export_gguf,
    quantize_gguf,
    write_modelfile,
)

PROBES = [
    "今天天气很好，我们去公园散步吧。",
    "“守株待兔”是什么意思？——比喻死守狭隘经验！",
    "2026年12月7日，气温-3.5℃，湿度 87%。",
    "Hello, world! It's xiaophi's test: don't   stop.",
    "表情😀👍和符号©®™，还有日文かな。",
    "第一行\r\n第二行\n\n\t缩进  多个空格",
    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n",
]
PROMPTS = [
    [{"role": "user", "content": "你好"}],
    [{"role": "user", "content": "画蛇添足是什么意思？"}],
    [{"role": "system", "content": "你是小Phi。"}, {"role": "user", "content": "北京是哪里？"}],
    [{"role": "user", "content": "学而时习之"}],
]


def trained_checkpoint(path, arch: str, tied: bool):
    """A tiny checkpoint of `arch` whose weights are not all near zero: a few steps of training
    on the tiny texts make its greedy choices clear (a random model's are near-ties)."""
    from tests.conftest import TINY_TEXTS

    build_tiny_checkpoint(path, arch=arch, context=128)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tied:
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.get_input_embeddings().weight
    ids = tokenizer("".join(TINY_TEXTS), return_tensors="pt")["input_ids"][:, :120]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
    return path


@pytest.fixture(
    scope="module",
    params=[("phi", True), ("phi", False), ("llama", True), ("llama", False), ("qwen2", False)],
    ids=lambda p: f"{p[0]}-{'tied' if p[1] else 'untied'}",
)
def checkpoint(request, tmp_path_factory):
    arch, tied = request.param
    return trained_checkpoint(tmp_path_factory.mktemp(f"{arch}{tied}") / "model", arch, tied)


def llama(path, **kwargs):
    return llama_cpp.Llama(str(path), n_ctx=128, n_threads=2, verbose=False, seed=0, **kwargs)


def prompt_ids(tokenizer, messages) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)


def test_llama_cpp_tokenizes_like_the_checkpoint(checkpoint, tmp_path):
    path = export_gguf(checkpoint, tmp_path / "m.gguf", "f32").path
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    vocab = llama(path, vocab_only=True)
    for text in PROBES + [tokenizer.apply_chat_template(p, tokenize=False) for p in PROMPTS]:
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert vocab.tokenize(text.encode(), add_bos=False, special=True) == expected, text
        # and back: the bytes of the text
        assert vocab.detokenize(expected, special=True) == text.encode()
    # text that spells a control token is not one unless asked (special=False: plain text)
    plain = vocab.tokenize(b"<|im_end|>", add_bos=False, special=False)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") not in plain


def next_token_distance(llm, model, ids: list[int]) -> float:
    """Total variation distance between llama.cpp's and transformers' next-token distributions
    at every position of `ids` (the largest)."""
    with torch.no_grad():
        expected = torch.softmax(model(torch.tensor([ids])).logits[0].double(), -1).numpy()
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float64)
    got = np.exp(logits - logits.max(-1, keepdims=True))
    got /= got.sum(-1, keepdims=True)
    return float((0.5 * np.abs(got - expected).sum(-1)).max())


def test_f32_generates_the_checkpoints_greedy_tokens(checkpoint, tmp_path):
    path = export_gguf(checkpoint, tmp_path / "m.gguf", "f32").path
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    llm = llama(path, logits_all=True)
    for messages in PROMPTS:
        ids = prompt_ids(tokenizer, messages)
        assert gguf_greedy(llm, ids) == hf_greedy(model, ids), messages
        # not only the argmax: the whole distribution, at every position (attention, rotary)
        assert next_token_distance(llm, model, ids) < 1e-3, messages


def test_f16_and_q8_0_stay_close(checkpoint, tmp_path):
    """f16 rounds every weight, q8_0 more: llama.cpp's next-token distributions stay within a
    small total variation distance of the checkpoint's at every prompt position."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    for outtype, bound in (("f16", 0.01), ("q8_0", 0.05)):
        path = export_gguf(checkpoint, tmp_path / f"m-{outtype}.gguf", outtype).path
        llm = llama(path, logits_all=True)
        for messages in PROMPTS:
            distance = next_token_distance(llm, model, prompt_ids(tokenizer, messages))
            assert distance < bound, (outtype, messages, distance)


def test_the_file_carries_template_end_token_and_penalty(tmp_path):
    import gguf

    path = trained_checkpoint(tmp_path / "model", "phi", True)
    from transformers import GenerationConfig

    config = GenerationConfig.from_pretrained(path)
    config.repetition_penalty = 1.3
    config.save_pretrained(path)
    out = export_gguf(path, tmp_path / "m.gguf", "q8_0").path
    reader = gguf.GGUFReader(out)
    fields = {name: reader.fields[name] for name in reader.fields}
    tokenizer = AutoTokenizer.from_pretrained(path)

    def value(name):
        return fields[name].contents()

    assert value("general.architecture") == "phi2"
    assert value("tokenizer.ggml.pre") == "qwen2"
    assert value("tokenizer.ggml.eos_token_id") == tokenizer.convert_tokens_to_ids("<|im_end|>")
    # the template as plain Jinja renders it (transformers' {% generation %} tag left out)
    template = value("tokenizer.chat_template")
    tag = re.compile(r"\{%-?\s*generation")
    assert tag.search(tokenizer.chat_template) and not tag.search(template)
    import jinja2

    plain = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).from_string(template)
    for messages in PROMPTS + [PROMPTS[0] + [{"role": "assistant", "content": "你好！"}]]:
        assert plain.render(messages=messages, add_generation_prompt=True) == (
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        )
    assert value("general.sampling.penalty_repeat") == pytest.approx(1.3)
    names = {t.name: t for t in reader.tensors}
    assert {"output.weight", "output.bias", "token_embd.weight"} <= set(names)
    # the tied head is written out: llama.cpp's phi2 loader needs it
    assert names["output.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    modelfile = write_modelfile(out, path, system="你是小Phi。").read_text(encoding="utf-8")
    assert modelfile.startswith("FROM ./m.gguf\n")
    assert f'TEMPLATE """{OLLAMA_TEMPLATE}"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "PARAMETER repeat_penalty 1.3" in modelfile and 'SYSTEM """你是小Phi。"""' in modelfile


def render_go_template(template: str, messages: list[dict]) -> str:
    """Go's text/template semantics for the constructs OLLAMA_TEMPLATE uses — `range .Messages`,
    `if eq .Role "…"` / `else` / `end`, `.Role`, `.Content`, and `{{-` trimming the text before
    it — enough to compare its output with the Jinja template's."""
    parts = re.split(r"(\{\{-?\s*.*?\s*-?\}\})", template)
    tokens = []
    for part in parts:
        action = re.fullmatch(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", part)
        if action is None:
            tokens.append(("text", part))
            continue
        if action.group(1) and tokens and tokens[-1][0] == "text":
            tokens[-1] = ("text", tokens[-1][1].rstrip())
        tokens.append(("action", action.group(2)))

    def block(i: int, stop: set[str]) -> tuple[list, int]:
        nodes = []
        while i < len(tokens):
            kind, value = tokens[i]
            if kind == "action" and value in stop:
                return nodes, i
            if kind == "action" and value == "range .Messages":
                body, i = block(i + 1, {"end"})
                nodes.append(("range", body))
            elif kind == "action" and value.startswith("if eq .Role"):
                yes, i = block(i + 1, {"else", "end"})
                no = []
                if tokens[i][1] == "else":
                    no, i = block(i + 1, {"end"})
                nodes.append(("if", value.split('"')[1], yes, no))
            else:
                nodes.append((kind, value))
            i += 1
        return nodes, i

    def run(nodes, message=None) -> str:
        out = ""
        for node in nodes:
            if node[0] == "text":
                out += node[1]
            elif node[0] == "action":
                out += message[node[1].lstrip(".").lower()]
            elif node[0] == "range":
                out += "".join(run(node[1], m) for m in messages)
            else:
                out += run(node[2] if message["role"] == node[1] else node[3], message)
        return out

    return run(block(0, set())[0])


def test_the_ollama_template_renders_what_the_chat_template_renders(tmp_path):
    path = build_tiny_checkpoint(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    conversations = [
        *PROMPTS,
        [
            {"role": "system", "content": "你是小Phi。"},
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！"},
            {"role": "user", "content": "再见"},
        ],
        [
            {"role": "user", "content": "查一下"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "结果"},
        ],
    ]
    for messages in conversations:
        expected = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        if any(m.get("tool_calls") for m in messages):
            # ollama keeps the call in the assistant's content (its own tool parsing aside)
            expected = expected.replace(
                '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', ""
            )
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        assert render_go_template(OLLAMA_TEMPLATE, plain) == expected


def test_llama_cpp_chat_answers_with_the_checkpoints_greedy_answer(tmp_path):
    """llama-cpp-python's chat completion (what `python -m llama_cpp.server` serves), reading
    the template and end token from the file alone, gives the checkpoint's greedy answer."""
    path = trained_checkpoint(tmp_path / "model", "phi", True)
    out = export_gguf(path, tmp_path / "m.gguf", "f32").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    llm = llama(out)
    for messages in PROMPTS:
        ids = prompt_ids(tokenizer, messages)
        expected = model.generate(
            torch.tensor([ids]), max_new_tokens=24, do_sample=False, repetition_penalty=1.0
        )[0, len(ids) :].tolist()
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        expected = expected[: expected.index(end)] if end in expected else expected
        answer = llm.create_chat_completion(
            messages, max_tokens=24, temperature=0.0, top_k=1, repeat_penalty=1.0
        )["choices"][0]["message"]["content"]
        # the text of the same tokens, invalid UTF-8 dropped as llama-cpp-python drops it (a
        # tiny model's first token can be half a character)
        assert answer == llm.detokenize(expected).decode("utf-8", errors="ignore"), messages


def test_llama_cpp_quantizes_to_k_quants(tmp_path):
    path = trained_checkpoint(tmp_path / "model", "llama", False)
    f16 = export_gguf(path, tmp_path / "m-f16.gguf", "f16").path
    q4 = quantize_gguf(f16, "q4_k_m")
    assert q4.name == "m-q4_k_m.gguf" and q4.stat().st_size < f16.stat().st_size
    tokenizer = AutoTokenizer.from_pretrained(path)
    llm = llama(q4)
    assert len(gguf_greedy(llm, prompt_ids(tokenizer, PROMPTS[0]))) == NEW_TOKENS
    with pytest.raises(ExportError, match="exists"):
        quantize_gguf(f16, "q4_k_m")


def test_bad_input_is_refused_with_the_reason(tmp_path, capsys):
    path = trained_checkpoint(tmp_path / "model", "phi", False)
    out = export_gguf(path, tmp_path / "m.gguf", "f16").path
    with pytest.raises(ExportError, match="--force"):
        export_gguf(path, out, "f16")
    assert export_gguf(path, out, "f32", force=True).path == out
    with pytest.raises(ExportError, match="--outtype"):
        export_gguf(path, tmp_path / "x.gguf", "q3")
    # a run folder means its final chat model; a folder with none is refused
    with pytest.raises(ExportError, match="neither a checkpoint"):
        export_gguf(tmp_path / "nothing", tmp_path / "y.gguf")
    # no tokenizer.json
    bare = tmp_path / "bare"
    shutil.copytree(path, bare)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(ExportError, match="no tokenizer.json"):
        export_gguf(bare, tmp_path / "z.gguf")
    # a pre-tokenizer llama.cpp would not reproduce
    other = tmp_path / "other"
    shutil.copytree(path, other)
    data = json.loads((other / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+"
    (other / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ExportError, match="split pattern is not Qwen2's"):
        export_gguf(other, tmp_path / "w.gguf")
    # an architecture no recipe chooses
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=400)).save_pretrained(
        gpt2
    )
    shutil.copy(path / "tokenizer.json", gpt2)
    with pytest.raises(ExportError, match="'gpt2' model.*phi, llama, qwen2"):
        export_gguf(gpt2, tmp_path / "v.gguf")
    # the command line: exit 2 and the message, no traceback
    with pytest.raises(SystemExit) as stopped:
        cli_main(["export", "gguf", str(path), "--out", str(out)])
    assert stopped.value.code == 2 and "--force" in capsys.readouterr().err


def test_the_gguf_stage_exports_a_runs_chat_model_as_the_recipe_asks(tmp_path):
    from training.config import load_recipe
    from training.pipeline import run_stage

    run = tmp_path / "myrun"
    trained_checkpoint(run / "dpo", "phi", True)
    recipe = load_recipe("tiny", {"export.gguf": ["q8_0", "q4_k_m"]})
    report = run_stage(recipe, run, "gguf")
    assert set(report["gguf"]) == {"q8_0", "q4_k_m"}
    for kind in ("q8_0", "q4_k_m"):
        path = run / "gguf" / f"myrun-{kind}.gguf"
        assert report["gguf"][kind] == {"file": path.name, "bytes": path.stat().st_size}
        modelfile = (run / "gguf" / f"myrun-{kind}.Modelfile").read_text(encoding="utf-8")
        assert modelfile.startswith(f"FROM ./{path.name}\n")
    # only what was asked for: the f16 the quantizer started from is not kept
    assert sorted(p.suffix for p in (run / "gguf").glob("*.gguf")) == [".gguf", ".gguf"]
    with pytest.raises(ValueError, match="export.gguf has q3.*q4_k_m"):
        load_recipe("tiny", {"export.gguf": ["q3"]})
