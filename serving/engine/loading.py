"""Load a served checkpoint: its tokenizer, and its model on the chosen device and dtype.

Both the server (factory.py) and the engine process (engine_process.py) load from here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from serving.config import Settings

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[setting]


def load_tokenizer(settings: Settings):
    """The tokenizer of `settings.model`, which must be a checkpoint with a chat template."""
    path = Path(settings.model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a checkpoint directory (no config.json); pass --model"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not tokenizer.chat_template:
        raise ValueError(
            f"{path} has no chat template (chat_template.jinja); chat completions need one"
        )
    return tokenizer


def engine_process_threads(cpu_count: int | None = None) -> int:
    """Default torch threads of a CPU engine process: every core but one, which is left to the
    web server (on small CPUs extra OpenMP threads fight the server for cores and lose time)."""
    return max(1, (cpu_count or os.cpu_count() or 1) - 1)


def load_model(settings: Settings):
    """(model, tokenizer) from `settings.model`, on the chosen device and dtype, in eval mode."""
    path = Path(settings.model)
    tokenizer = load_tokenizer(settings)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
    logger.info("loaded %s on %s (%s)", path, device, dtype)
    return model, tokenizer
