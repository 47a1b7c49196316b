"""Load a checkpoint directory and build the engine the settings ask for."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from serving.config import Settings
from serving.engine.base import Engine

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    engine: Engine
    tokenizer: object
    name: str


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


def build_engine(settings: Settings) -> LoadedModel:
    if settings.engine == "remote":
        return _remote_engine(settings)
    if settings.engine == "slots" and settings.engine_process:
        from serving.engine.engine_process import ProcessSlotEngine

        tokenizer = load_tokenizer(settings)  # the model loads in the engine process
        engine = ProcessSlotEngine(settings, tokenizer)
        return LoadedModel(engine=engine, tokenizer=tokenizer, name=settings.model_name)
    model, tokenizer = load_model(settings)
    if settings.engine == "slots":
        from serving.engine.slot_batching import SlotBatchingEngine

        engine = SlotBatchingEngine(
            model,
            tokenizer,
            max_running=settings.max_running,
            max_waiting=settings.max_waiting,
            max_batch_tokens=settings.max_batch_tokens,
        )
    elif settings.engine == "hf-continuous":
        from serving.engine.hf_continuous import HFContinuousEngine

        engine = HFContinuousEngine(
            model,
            tokenizer,
            max_running=settings.max_running,
            max_waiting=settings.max_waiting,
            page_size=settings.kv_page_size,
            max_batch_tokens=settings.max_batch_tokens,
        )
    else:  # pragma: no cover - Settings validates the name
        raise ValueError(f"unknown engine {settings.engine!r}")
    return LoadedModel(engine=engine, tokenizer=tokenizer, name=settings.model_name)


def _remote_engine(settings: Settings) -> LoadedModel:
    """The local checkpoint's tokenizer and config only (no weights): the upstream generates."""
    from transformers import AutoConfig

    from serving.engine.remote import RemoteEngine

    if not settings.remote_base_url:
        raise ValueError(
            "XIAOPHI_ENGINE=remote needs XIAOPHI_REMOTE_BASE_URL (--remote-base-url), "
            "e.g. http://vllm:8000/v1"
        )
    tokenizer = load_tokenizer(settings)
    config = AutoConfig.from_pretrained(str(settings.model))
    engine = RemoteEngine(
        tokenizer,
        base_url=settings.remote_base_url,
        context_length=config.max_position_embeddings,
        api_key=settings.remote_api_key,
        model=settings.remote_model,
        prompt_format=settings.remote_prompt_format,
        max_running=settings.max_running,
        max_waiting=settings.max_waiting,
        connect_timeout_s=settings.remote_connect_timeout_s,
        read_timeout_s=settings.remote_read_timeout_s,
    )
    return LoadedModel(engine=engine, tokenizer=tokenizer, name=settings.model_name)
