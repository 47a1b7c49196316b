"""The `gguf` stage: the run's chat model as the GGUF files `export.gguf` asks for, each with
an ollama Modelfile, in `<run>/gguf/` (training/export_gguf.py writes them)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from training.config import Recipe
from training.export_gguf import OUTTYPES, export_gguf, quantize_gguf, write_modelfile
from training.stage_dirs import stage_dir


def main(recipe: Recipe, run_dir: Path, work: Path) -> dict:
    model = stage_dir(run_dir, "dpo")
    name = Path(run_dir).resolve().name
    files = {}
    with tempfile.TemporaryDirectory() as scratch:
        for kind in recipe.export.gguf:
            out = Path(work) / f"{name}-{kind}.gguf"
            if kind in OUTTYPES:
                path = export_gguf(model, out, kind).path
            else:  # a llama.cpp quantization, from f16 (the one already written, if asked for)
                source = Path(work) / f"{name}-f16.gguf"
                if not source.is_file():
                    source = export_gguf(model, Path(scratch) / source.name, "f16").path
                path = quantize_gguf(source, kind, out)
            write_modelfile(path, model)
            files[kind] = {"file": path.name, "bytes": path.stat().st_size}
    return {"model": str(model), "gguf": files}
