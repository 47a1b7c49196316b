"""Settings come from XIAOPHI_* variables; CLI flags override them."""

from __future__ import annotations

from pathlib import Path

from serving.cli import parse_args
from serving.config import Settings


def test_env_then_flags(monkeypatch):
    monkeypatch.setenv("XIAOPHI_API_KEYS", "k1, k2")
    monkeypatch.setenv("XIAOPHI_PORT", "9000")
    monkeypatch.setenv("XIAOPHI_MODEL", "runs/tiny/final")
    settings = Settings(_env_file=None)
    assert settings.api_keys == ["k1", "k2"]
    assert settings.port == 9000 and settings.model == Path("runs/tiny/final")
    assert settings.model_name == "final"
    flags = Settings(
        _env_file=None,
        **parse_args(["--port", "8001", "--api-keys", "x", "--served-model-name", "m"]),
    )
    assert flags.port == 8001 and flags.api_keys == ["x"] and flags.model_name == "m"
    assert flags.model == Path("runs/tiny/final")  # untouched by flags: from the environment
