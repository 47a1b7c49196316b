"""Ask a trained chat model held-out questions and record how it answers (greedy)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch

HAN = re.compile(r"[\u4e00-\u9fff]")


@torch.no_grad()
def ask(model, tokenizer, messages: list[dict], max_new_tokens: int = 64) -> dict:
    """Greedy answer to `messages` (with the model's own repetition penalty); whether it ended on
    an end token, and whether it is Chinese."""
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    input_ids = torch.tensor([ids], device=model.device)
    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens, config.do_sample = max_new_tokens, False
    out = model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config
    )
    new = out[0, len(ids) :].tolist()
    eos_ids = model.generation_config.eos_token_id
    eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids])
    answer = tokenizer.decode(new, skip_special_tokens=True).strip()
    return {
        "answer": answer,
        "new_tokens": len(new),
        "stopped_at_end_token": bool(new) and new[-1] in eos_ids,
        "chinese_chars": len(HAN.findall(answer)),
    }


def probe_questions(path: str | Path, limit: int) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) >= limit:
                break
    return rows


def probe_model(
    model_dir: Path, probe_file: str | Path, limit: int = 3, max_new_tokens: int = 64
) -> list[dict]:
    """Answers of the model in `model_dir` to the first `limit` held-out probe questions."""
    from training.model_factory import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_dir, "probe")
    results = []
    for row in probe_questions(probe_file, limit):
        result = ask(model, tokenizer, [{"role": "user", "content": row["prompt"]}], max_new_tokens)
        results.append({"question": row["prompt"], "reference": row.get("completion"), **result})
    return results
