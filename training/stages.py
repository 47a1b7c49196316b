"""The pipeline's stages, in order: what each reads, needs and depends on, and where it runs.

A stage is a module with `main(recipe, run_dir, work) -> report`: it reads earlier stages from
`run_dir`, writes its files into `work` (the `<stage>.partial` folder) and returns its report;
the runner (`training.pipeline`) publishes the folder with `stage_report.json`. Adding a stage is
one module and one line in `STAGES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.config import Recipe
from training.lora import check_qlora

Inputs = list[tuple[list[str], str]]


def _nothing(recipe: Recipe) -> Inputs:
    return []


def _always(recipe: Recipe) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    """Module whose `main(recipe, run_dir, work)` runs the stage."""
    fields: tuple[str, ...]
    """Recipe fields its output depends on, through earlier stages too: `section.` prefixes or
    exact `section.field` names. A finished stage is kept only while these stay the same."""
    needs: tuple[str, ...] = ()
    """Earlier stages whose folders it reads (those the recipe wants)."""
    reads: Callable[[Recipe], Inputs] = _nothing
    """(files, kind) of data it reads, checked before any work starts (`data.formats` kinds)."""
    all_processes: bool = False
    """Runs in every process of a launch (a Trainer spreads the work); else in the main one only."""
    wanted: Callable[[Recipe], bool] = _always
    """Whether the pipeline runs it for this recipe."""
    check: Callable[[Recipe], None] | None = None
    """More up-front checks of what it will read."""

    def run(self, recipe: Recipe, run_dir: Path, work: Path) -> dict:
        return importlib.import_module(self.module).main(recipe, Path(run_dir), Path(work))

    def depends_on(self, field: str) -> bool:
        """Whether this stage's output depends on the dotted recipe `field`."""
        return any(field.startswith(p) if p.endswith(".") else field == p for p in self.fields)


def _pretrain_text(recipe: Recipe) -> Inputs:
    return [(recipe.data.pretrain, "text"), ([recipe.data.pretrain_eval], "text")]


def _embedder_pairs_exist(recipe: Recipe) -> None:
    if not Path(recipe.embedder.pairs).is_file():
        raise FileNotFoundError(
            f"embedder pairs file {recipe.embedder.pairs} does not exist; build the demo data "
            "(`xiaophi-train data demo`), pass --embedder.pairs, or --embedder.enabled false."
        )


def _heldout_loads(recipe: Recipe) -> None:
    from training.eval.items import load_heldout

    if any(t.startswith("xiaophi") for t in recipe.eval.tasks):
        load_heldout(recipe.eval.heldout)  # a missing file says how to build it


def _starts_well(recipe: Recipe, stage: str) -> None:
    """What a Trainer stage will load fits: QLoRA only on CUDA, sequences within the base."""
    from training.base_model import check_fits_base

    check_qlora(getattr(recipe, stage).lora, stage)
    check_fits_base(recipe, stage)


_BASE = ("data.", "tokenizer.", "base", "base.")  # base: its path, and digest once recorded
_MODEL = (*_BASE, "model.", "pretrain.")
_SFT = (*_MODEL, "sft.", "decoding.")  # the decoding defaults live in the checkpoint

STAGES: list[Stage] = [
    Stage(
        "tokenizer",
        "training.tokenizer",
        _BASE,
        wanted=lambda r: r.base is None,  # a base brings its own tokenizer
        reads=lambda r: (
            _pretrain_text(r)
            + ([(r.tokenizer.chat_files, "sft")] if r.tokenizer.chat_files else [])
        ),
    ),
    Stage(
        "pretrain",
        "training.pretrain",
        _MODEL,
        needs=("tokenizer",),
        reads=_pretrain_text,
        all_processes=True,
        wanted=lambda r: r.pretrain.enabled,
        check=lambda r: _starts_well(r, "pretrain"),
    ),
    Stage(
        "sft",
        "training.sft",
        _SFT,
        needs=("pretrain",),
        reads=lambda r: [(r.data.sft, "sft"), ([r.data.sft_eval], "sft")],
        all_processes=True,
        check=lambda r: _starts_well(r, "sft"),
    ),
    Stage(
        "dpo-data",
        "training.dpo_data",
        (*_SFT, "dpo."),
        needs=("sft",),
        reads=lambda r: [(r.data.sft, "sft")],
        wanted=lambda r: not r.data.dpo,  # the user brought their own preference pairs
    ),
    Stage(
        "dpo",
        "training.dpo",
        (*_SFT, "dpo."),
        needs=("sft", "dpo-data"),
        reads=lambda r: [(r.data.dpo, "dpo")] if r.data.dpo else [],
        all_processes=True,
        check=lambda r: _starts_well(r, "dpo"),
    ),
    Stage(
        "embedder",
        "training.embedder",
        ("embedder.", "pretrain.seed"),  # the embedder trains with the run's seed
        wanted=lambda r: r.embedder.enabled,
        check=_embedder_pairs_exist,
    ),
    Stage(
        "gguf",
        "training.export_stage",
        (*_SFT, "dpo.", "export."),
        needs=("dpo",),
        wanted=lambda r: bool(r.export.gguf),
    ),
    Stage(
        "eval",
        "training.eval.stage",
        (*_SFT, "dpo.", "eval."),
        wanted=lambda r: r.eval.enabled,
        check=_heldout_loads,
    ),
]
STAGE_NAMES = [stage.name for stage in STAGES]


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r}; the stages are {', '.join(STAGE_NAMES)}.")


def wanted_stages(recipe: Recipe) -> list[Stage]:
    return [stage for stage in STAGES if stage.wanted(recipe)]


def needed_stages(recipe: Recipe, stage: Stage) -> list[str]:
    """The earlier stages `stage` reads for this recipe (a stage the recipe skips is not read)."""
    return [name for name in stage.needs if get_stage(name).wanted(recipe)]
