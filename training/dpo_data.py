"""Stage 4: preference pairs for DPO: chosen = the gold answer, rejected = the SFT model's own
generation for the same training prompt (as the seed project did). These are model-generated
negatives, recorded as such (`rejected_source`), never called human preferences.
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path

import torch

from training import progress
from training.config import Recipe
from training.model_factory import load_model_and_tokenizer

STAGE = "dpo-data"
REJECTED_SOURCE = "sft_model_generation"


def split_prompt_and_answer(messages: list[dict]) -> tuple[list[dict], str] | None:
    """Everything before the last assistant turn, and that turn's content."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            prompt = messages[:i]
            if prompt and prompt[-1]["role"] == "user":
                return prompt, messages[i]["content"]
            return None
    return None


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    prompts: list[list[dict]],
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    seed: int,
) -> list[str]:
    """The model's answer to each conversation prompt, through the chat template, batched."""
    torch.manual_seed(seed)
    model.eval()
    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens = max_new_tokens
    config.do_sample = temperature > 0
    config.temperature = temperature if temperature > 0 else None
    config.top_k = config.top_p = None
    # rejected answers come from the model's own distribution, as DPO assumes, not from the
    # repetition penalty the SFT stage chose for serving
    config.repetition_penalty = 1.0
    tokenizer.padding_side = "left"
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer.apply_chat_template(
            prompts[start : start + batch_size],
            add_generation_prompt=True,
            tokenize=True,
            padding=True,
            return_dict=True,
            return_tensors="pt",
        ).to(model.device)
        out = model.generate(**batch, generation_config=config)
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        answers += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        progress.report(done=len(answers), total=len(prompts), unit="answers")
    return answers


def build_pairs(recipe: Recipe, model, tokenizer) -> list[dict]:
    from training.data.formats import iter_sft_conversations

    cfg = recipe.dpo
    rows = list(iter_sft_conversations(recipe.data.sft))
    conversations = [row["messages"] for row in rows]
    # a grounded conversation's answer comes from its documents, which a DPO prompt lacks; a
    # tool-use conversation's from its tools' results (DPO pairs here are plain chat)
    grounded = [bool(row["documents"]) or row["uses_tools"] for row in rows]
    order = list(range(len(conversations)))
    random.Random(cfg.seed).shuffle(order)
    prompts, golds = [], []
    for i in order:
        if grounded[i]:
            continue
        split = split_prompt_and_answer(conversations[i])
        if split:
            prompts.append(split[0])
            golds.append(split[1])
        if len(prompts) >= cfg.num_prompts:
            break
    rejected = generate_answers(
        model,
        tokenizer,
        prompts,
        cfg.gen_max_new_tokens,
        cfg.gen_temperature,
        cfg.gen_batch_size,
        cfg.seed,
    )
    return [
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": gold}],
            "rejected": [{"role": "assistant", "content": answer}],
            "rejected_source": REJECTED_SOURCE,
        }
        for prompt, gold, answer in zip(prompts, golds, rejected, strict=True)
        if answer != gold.strip()
    ]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(recipe: Recipe, run_dir: Path, work: Path) -> dict:
    """Generate rejected answers with `run_dir/sft`; write the pairs into `work` (published as
    `run_dir/dpo-data`)."""
    model, tokenizer = load_model_and_tokenizer(Path(run_dir) / "sft", STAGE)
    if torch.cuda.is_available():
        model = model.to("cuda", dtype=torch.bfloat16)
    start = time.time()
    pairs = build_pairs(recipe, model, tokenizer)
    if len(pairs) < 2:
        raise ValueError(
            f"only {len(pairs)} usable DPO pairs came out of {recipe.dpo.num_prompts} prompts; "
            "raise --dpo.num_prompts or check the SFT data."
        )
    n_eval = max(1, len(pairs) // 10)
    write_jsonl(work / "pairs.jsonl", pairs[n_eval:])
    write_jsonl(work / "pairs_eval.jsonl", pairs[:n_eval])
    return {
        "stage": STAGE,
        "pairs": len(pairs) - n_eval,
        "eval_pairs": n_eval,
        "rejected_source": REJECTED_SOURCE,
        "wall_time_s": round(time.time() - start, 2),
    }
