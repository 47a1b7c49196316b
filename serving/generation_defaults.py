"""Sampling defaults from the served checkpoint's `generation_config.json`.

Every parameter a request leaves out takes the checkpoint's value, as vLLM does by default; a
request's own values win. HF's meaning of the file is kept: `do_sample: false` is greedy
(temperature 0 here), so a request without `temperature` gets what `model.generate` gives. Only
the keys the file holds count; without the file, OpenAI's defaults apply (temperature 1).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingDefaults:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0


def read_sampling_defaults(model_dir: str | Path | None) -> SamplingDefaults:
    """The defaults of the checkpoint in `model_dir` (plain defaults when it has no file)."""
    if model_dir is None:
        return SamplingDefaults()
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return SamplingDefaults()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("ignoring %s: %s", path, exc)
        return SamplingDefaults()
    sampling = raw.get("do_sample")
    if sampling is False:
        temperature = 0.0
    else:
        temperature = _number(raw.get("temperature"), 1.0, low=0.0, high=2.0)
    return SamplingDefaults(
        temperature=temperature,
        top_p=_number(raw.get("top_p"), 1.0, low=1e-9, high=1.0),
        top_k=int(_number(raw.get("top_k"), 0, low=0, high=1e9)) if sampling is not False else 0,
        repetition_penalty=_number(raw.get("repetition_penalty"), 1.0, low=1e-9, high=1e9),
    )


def _number(value, default: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return float(value) if low <= value <= high else default
