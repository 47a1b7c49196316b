"""Service settings: `XIAOPHI_*` environment variables (or a `.env` file), overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XIAOPHI_", env_file=".env", extra="ignore")

    model: Path | None = Field(
        None, description="Checkpoint directory (any HF causal LM with a chat template)."
    )
    served_model_name: str | None = Field(
        None, description="Model id the API reports and accepts (default: the directory name)."
    )
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, description="Port to bind.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys; when set, every route but /health needs one.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = cuda when available, else cpu."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 on GPU, float32 on CPU."
    )
    engine: Literal["slots", "hf-continuous", "remote"] = Field(
        "slots",
        description=(
            "Which engine runs the model: `slots` (in-house: a KV-cache row per request, one "
            "batched decode step for all), `hf-continuous` (transformers' continuous batching) "
            "or `remote` (an OpenAI-compatible server at `remote_base_url` generates; `model` "
            "still renders prompts and counts tokens)."
        ),
    )
    remote_base_url: str | None = Field(
        None,
        description="`remote` engine: the upstream's OpenAI-compatible base URL, e.g. "
        "http://vllm:8000/v1.",
    )
    remote_api_key: str | None = Field(None, description="`remote` engine: the upstream's key.")
    remote_model: str | None = Field(
        None,
        description="`remote` engine: the upstream's model id (default: the one it lists).",
    )
    remote_prompt_format: Literal["auto", "ids", "text"] = Field(
        "auto",
        description="`remote` engine: send prompts as token ids or text (auto: ids when the "
        "upstream takes them).",
    )
    remote_connect_timeout_s: float = Field(
        5.0, gt=0, description="`remote` engine: seconds to connect to the upstream."
    )
    remote_read_timeout_s: float = Field(
        60.0, gt=0, description="`remote` engine: longest wait for the upstream's next bytes."
    )
    engine_process: bool = Field(
        True,
        description=(
            "Run the `slots` engine's model loop in a process of its own (else in a thread of "
            "the server, sharing its GIL with the web server)."
        ),
    )
    engine_max_restarts: int = Field(
        5,
        ge=0,
        description=(
            "Engine process restarts allowed in a row (each crash within a minute of its start); "
            "one more crash and the server exits with code 4, for its supervisor to restart it. "
            "0: exit at the first crash."
        ),
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description=(
            "CPU threads for torch (default: every core but one in the engine process, "
            "torch's choice otherwise)."
        ),
    )
    max_running: int = Field(
        32,
        ge=1,
        description="Requests generated together (batch slots); the KV cache is sized for them.",
    )
    max_waiting: int = Field(
        128, ge=0, description="Requests queued behind the running ones; beyond that, 429."
    )
    max_batch_tokens: int | None = Field(
        None, ge=16, description="Tokens per forward pass (default: max(context, 512))."
    )
    kv_page_size: int = Field(
        32, ge=4, description="Tokens per KV-cache page (`hf-continuous` engine)."
    )
    max_n: int = Field(8, ge=1, description="Largest `n` (choices per request) accepted.")
    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="Largest request body; beyond it, 413."
    )
    kb_dir: Path | None = Field(
        None,
        description=(
            "Knowledge-base folder (default: ./kb, as for `xiaophi-kb`); the other knowledge-base "
            "settings are the `XIAOPHI_KB_*` variables of rag/config.py."
        ),
    )
    tools_file: Path | None = Field(
        None,
        description=(
            "Dictionary tools this server runs at /v1/tools (JSON; serving/dictionary_tools.py "
            "says its format; `make demo` writes data/demo/tools.json). Without one, none."
        ),
    )
    max_upload_files: int = Field(
        16, ge=1, description="Most files in one knowledge-base upload request."
    )
    ui: bool = Field(
        True, description="Serve the Gradio page at /ui (it calls this server over HTTP)."
    )
    ui_default_kb: str | None = Field(
        None,
        description="Knowledge base the page opens on, if it exists (`make demo` sets `demo`).",
    )
    log_level: str = Field("info", description="uvicorn log level.")

    @field_validator("tools_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        # XIAOPHI_TOOLS_FILE= (as compose passes an unset default through): no tools
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value):
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return self.model.name if self.model is not None else "none"
