"""Decoding defaults for a chat checkpoint, chosen on held-out dev probes.

Every candidate (greedy with each repetition penalty, and temperature/top-p sampling with each)
answers the dev probe questions (`data.probe`: held-out idioms the reported test split never
contains). The candidate with the lowest loop rate whose character F1 is within
`decoding.f1_tolerance` of plain greedy wins (then: most stops, best F1, mildest penalty). Its
settings go into the model's `generation_config`, which `save_pretrained` writes to
`generation_config.json`: `generate`, `xiaophi-serve` and other servers start from them.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from training.config import DecodingConfig
from training.eval.metrics import char_f1, is_loop
from training.eval.probe import probe_questions


def candidates(cfg: DecodingConfig) -> list[dict]:
    out = [{"repetition_penalty": float(rp)} for rp in cfg.repetition_penalties]
    for pair in cfg.sampling:
        t, _, p = pair.partition(":")
        out += [
            {"temperature": float(t), "top_p": float(p), "repetition_penalty": float(rp)}
            for rp in cfg.repetition_penalties
        ]
    if not any(c == {"repetition_penalty": 1.0} for c in out):
        out.insert(0, {"repetition_penalty": 1.0})  # the baseline every choice is held to
    return out


@torch.no_grad()
def answer_all(
    model,
    tokenizer,
    questions: list[str],
    settings: dict,
    max_new_tokens: int,
    batch_size: int = 64,
    seed: int = 0,
) -> list[dict]:
    """Each question's answer under `settings`: text, whether it stopped on an end token."""
    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens = max_new_tokens
    config.repetition_penalty = settings.get("repetition_penalty", 1.0)
    config.do_sample = "temperature" in settings
    config.temperature = settings.get("temperature", 1.0)
    config.top_p = settings.get("top_p", 1.0)
    config.top_k = None
    ends = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    results = []
    try:
        for start in range(0, len(questions), batch_size):
            prompts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
                )
                for q in questions[start : start + batch_size]
            ]
            batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            out = model.generate(**batch, generation_config=config)
            for row in out[:, batch["input_ids"].shape[1] :].tolist():
                cut = next((i for i, t in enumerate(row) if t in ends), None)
                text = tokenizer.decode(row if cut is None else row[:cut], skip_special_tokens=True)
                results.append({"text": text.strip(), "stopped": cut is not None})
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return results


def score(answers: list[dict], references: list[str]) -> dict:
    n = len(answers)
    return {
        "char_f1": round(
            sum(char_f1(a["text"], r) for a, r in zip(answers, references, strict=True)) / n, 4
        ),
        "loop_rate": round(sum(is_loop(a["text"], a["stopped"]) for a in answers) / n, 4),
        "stop_rate": round(sum(a["stopped"] for a in answers) / n, 4),
    }


def choose(rows: list[dict], f1_tolerance: float) -> dict:
    """The winning row among measured candidates (see the module docstring)."""
    baseline = next(r for r in rows if r["settings"] == {"repetition_penalty": 1.0})
    allowed = [r for r in rows if r["char_f1"] >= baseline["char_f1"] - f1_tolerance]
    return min(
        allowed,
        key=lambda r: (
            r["loop_rate"],
            -r["stop_rate"],
            -r["char_f1"],
            "temperature" in r["settings"],
            r["settings"]["repetition_penalty"],
        ),
    )


def tune_decoding(model, tokenizer, probe_file: str | Path, cfg: DecodingConfig) -> dict:
    """Measure every candidate on the dev probes, set the winner on `model.generation_config`,
    and return the report (every row, the choice, the baseline)."""
    if not cfg.tune or not Path(probe_file).is_file():
        return {
            "tuned": False,
            "reason": "decoding.tune is off" if not cfg.tune else f"no probe file {probe_file}",
        }
    probes = probe_questions(probe_file, cfg.probes)
    questions = [p["prompt"] for p in probes]
    references = [p.get("completion", "") for p in probes]
    rows = []
    for settings in candidates(cfg):
        answers = answer_all(model, tokenizer, questions, settings, cfg.max_new_tokens)
        rows.append({"settings": settings, **score(answers, references)})
    chosen = choose(rows, cfg.f1_tolerance)
    apply_settings(model.generation_config, chosen["settings"])
    baseline = next(r for r in rows if r["settings"] == {"repetition_penalty": 1.0})
    return {
        "tuned": True,
        "probes": len(probes),
        "max_new_tokens": cfg.max_new_tokens,
        "baseline": baseline,
        "chosen": chosen,
        "candidates": rows,
    }


def apply_settings(config, settings: dict) -> None:
    """Write chosen settings into a GenerationConfig (a greedy choice carries no temperature:
    transformers refuses to save one without sampling)."""
    config.repetition_penalty = settings.get("repetition_penalty", 1.0)
    if "temperature" in settings:
        config.do_sample = True
        config.temperature = settings["temperature"]
        config.top_p = settings.get("top_p", 1.0)
    else:
        config.do_sample = False
        config.temperature = None
        config.top_p = None
