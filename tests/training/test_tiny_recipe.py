"""`make demo` end to end (demo/cli.py) on the real demo corpora: the shipped `tiny` recipe runs
every stage and visibly learns, the demo knowledge base is filled, and the server answers
through the official openai client with sources — then a second start skips all training."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_demo(cwd: Path, port: int) -> tuple[subprocess.Popen, list[str]]:
    """Run the demo (`xiaophi-demo`) until it prints its banner; return the process and its output so far."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo", "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "XIAOPHI_LOG_LEVEL": "warning"},
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl-C stops the server" in line:
            return proc, lines
    raise AssertionError("demo.py ended before serving:\n" + "".join(lines[-40:]))


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_make_demo_trains_learns_and_serves_with_sources(demo_data, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "demo").symlink_to(demo_data)
    port = free_port()

    proc, lines = start_demo(tmp_path, port)
    try:
        output = "".join(lines)
        assert f"http://127.0.0.1:{port}/ui" in output
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        # the chat model, then the run's own embedder, under the ids their routes answer to
        assert [m.id for m in client.models.list().data] == ["xiaophi-tiny", "embedder"]
        assert client.embeddings.create(model="embedder", input="桃园结义").data[0].embedding
        answer = client.chat.completions.create(
            model="xiaophi-tiny",
            messages=[{"role": "user", "content": "刘备、关羽、张飞在哪里结义？"}],
            extra_body={"knowledge_base": "demo"},
        )
        assert answer.choices[0].message.content
        sources = answer.model_extra["sources"]
        assert sources and {s["filename"] for s in sources} <= {
            p.name for p in (demo_data / "kb_docs").iterdir()
        }
        # the page's 使用工具: the server runs the demo's dictionaries, held-out terms included
        tools = httpx.get(f"http://127.0.0.1:{port}/v1/tools").json()["data"]
        assert [t["function"]["name"] for t in tools] == [
            "lookup_idiom",
            "lookup_word",
            "lookup_xiehouyu",
        ]
        held = json.loads((demo_data / "idiom_probe.jsonl").read_text().splitlines()[0])
        term = held["prompt"].split("“")[1].split("”")[0]
        looked_up = httpx.post(
            f"http://127.0.0.1:{port}/v1/tools/lookup_idiom", json={"arguments": {"term": term}}
        ).json()["content"]
        assert looked_up.startswith(f"{term}：") and held["completion"][:8] in looked_up
    finally:
        stop(proc)

    summary = json.loads((tmp_path / "runs" / "tiny" / "training_summary.json").read_text())
    stages = summary["stages"]
    assert summary["ran_this_time"] == [
        "tokenizer",
        "pretrain",
        "sft",
        "dpo-data",
        "dpo",
        "embedder",
        "gguf",
        "eval",
    ]
    # the chat model for llama.cpp and ollama, with the commands to run it: llama.cpp reads the
    # demo model's tokenizer token for token and answers the probe questions, stopping at the end
    gguf_file = tmp_path / "runs" / "tiny" / "gguf" / "tiny-q8_0.gguf"
    assert gguf_file.stat().st_size > 1e6
    assert "ollama create xiaophi -f tiny-q8_0.Modelfile" in output
    import llama_cpp
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "runs" / "tiny" / "dpo")
    llm = llama_cpp.Llama(str(gguf_file), n_ctx=256, n_threads=2, verbose=False)
    for probe in summary["probe"]:
        messages = [{"role": "user", "content": probe["question"]}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert (
            llm.tokenize(text.encode(), add_bos=False, special=True)
            == tokenizer(text, add_special_tokens=False)["input_ids"]
        )
        answer = llm.create_chat_completion(  # with the penalty the file carries, as llama-cli
            messages,
            max_tokens=64,
            temperature=0.0,
            repeat_penalty=float(llm.metadata.get("general.sampling.penalty_repeat", 1.0)),
        )
        assert answer["choices"][0]["finish_reason"] == "stop", answer
        assert answer["choices"][0]["message"]["content"].strip(), answer
    pre, sft, dpo = stages["pretrain"], stages["sft"], stages["dpo"]
    assert pre["perplexity"] < pre["perplexity_untrained"] / 4  # far below the untrained model's
    assert sft["eval_loss"] < sft["eval_loss_before"]  # below the pretrained model's, same set
    assert dpo["reward_accuracy_last"] is not None and dpo["reward_margin_last"] > 0
    # the probe questions are held-out idioms (never in training files: test_demo_data.py)
    assert summary["probe"]
    for probe in summary["probe"]:
        assert probe["stopped_at_end_token"], probe
        assert probe["chinese_chars"] >= 2, probe

    # a second `make demo` trains nothing and serves quickly
    start = time.time()
    proc, lines = start_demo(tmp_path, free_port())
    stop(proc)
    assert "skipping" in "".join(lines) and "duplicate" in "".join(lines)
    print(f"second start served after {time.time() - start:.1f}s")
