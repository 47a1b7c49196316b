"""Build the engine the settings ask for (the checkpoint loads through loading.py)."""

from __future__ import annotations

from dataclasses import dataclass

from serving.config import Settings
from serving.engine.base import Engine
from serving.engine.loading import load_model, load_tokenizer
from serving.engine.spawn import SpawnedProcess


@dataclass
class LoadedModel:
    engine: Engine
    tokenizer: object
    name: str


def build_engine(settings: Settings, spawned: SpawnedProcess | None = None) -> LoadedModel:
    """`spawned`: an engine process `xiaophi-serve` started early for these settings."""
    if settings.engine == "remote":
        return _remote_engine(settings)
    if settings.engine == "slots" and settings.engine_process:
        from serving.engine.engine_process import ProcessSlotEngine

        tokenizer = load_tokenizer(settings)  # the model loads in the engine process
        engine = ProcessSlotEngine(settings, tokenizer, spawned=spawned)
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
