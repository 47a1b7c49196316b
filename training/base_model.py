"""Starting from a model the user already has (`base:` in a recipe): which folder a stage starts
from, a digest that tells a changed base from the one a run began with, and the chat format a
base brings or is given.

A base is a Hugging Face causal-LM folder with its tokenizer (an earlier xiaophi run's stage, or
any model `AutoModelForCausalLM` loads). Its chat template, if it has one, is kept with its
special tokens; one without a template gets xiaophi's, whose markers are added to the tokenizer
as special tokens, the embeddings grown to hold them and the new rows set to the mean of the
others (so the new tokens start as an average token, not noise).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch

#: What the digest covers: the weights, the model config and every tokenizer file.
DIGEST_PATTERNS = (
    "config.json",
    "*.safetensors",
    "*.bin",
    "tokenizer*",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)


def digest_files(folder: Path) -> list[Path]:
    return sorted({p for pattern in DIGEST_PATTERNS for p in Path(folder).glob(pattern)})


def base_digest(folder: str | Path) -> str:
    """sha256 over the names and bytes of the base's weight, config and tokenizer files (cached
    while their sizes and modification times stay the same)."""
    folder = Path(folder).resolve()
    check_base(folder)
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in digest_files(folder))
    return _digest(folder, stamp)


@functools.lru_cache(maxsize=8)
def _digest(folder: Path, stamp: tuple) -> str:
    sha = hashlib.sha256()
    for name, *_ in stamp:
        sha.update(name.encode() + b"\0")
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()


def check_base(folder: str | Path) -> None:
    """A clear error for a base that is not a model folder with its tokenizer."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"base {folder} is not a folder; give --base a model folder.")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"base {folder} has no config.json: give --base a Hugging Face model folder (for a "
            "xiaophi run, one of its stage folders, e.g. runs/tiny/pretrain)."
        )
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise FileNotFoundError(f"base {folder} has no weights (*.safetensors or *.bin).")
    if (
        not (folder / "tokenizer.json").is_file()
        and not (folder / "tokenizer_config.json").is_file()
    ):
        raise FileNotFoundError(
            f"base {folder} has no tokenizer (tokenizer.json / tokenizer_config.json): save the "
            "tokenizer beside the model (tokenizer.save_pretrained(folder))."
        )


def check_fits_base(recipe, stage: str) -> None:
    """A stage's sequences within the positions of the base it starts from (the recipe's
    `model` section describes a model built from nothing, not the base)."""
    if recipe.base is None:
        return
    config = json.loads((Path(recipe.base) / "config.json").read_text(encoding="utf-8"))
    longest = config.get("max_position_embeddings")
    seq_len = getattr(recipe, stage).seq_len
    if longest is not None and seq_len > longest:
        raise ValueError(
            f"{stage}.seq_len={seq_len} exceeds the base's max_position_embeddings={longest} "
            f"({recipe.base}); lower --{stage}.seq_len."
        )


def start_folder(recipe, run_dir: Path, stage: str) -> Path | None:
    """The checkpoint `stage` starts from: the stage before it in this run, else the base
    (None: pretraining from nothing)."""
    if stage == "pretrain":
        return Path(recipe.base) if recipe.base else None
    if stage == "sft":
        return Path(run_dir) / "pretrain" if recipe.pretrain.enabled else Path(recipe.base)
    return Path(run_dir) / "sft"


def with_chat_template(model, tokenizer) -> dict:
    """Give a base without a chat template xiaophi's; returns what changed, for the report."""
    from training.chat_format import CHAT_TEMPLATE, IM_END, IM_START, PAD

    if tokenizer.chat_template:
        return {"chat_template": "the base's own"}
    added = tokenizer.add_tokens([IM_START, IM_END], special_tokens=True)
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": PAD})
    tokenizer.chat_template = CHAT_TEMPLATE
    resized = grow_embeddings(model, len(tokenizer)) if added else []
    return {
        "chat_template": "xiaophi's (the base had none)",
        "tokens_added": added,
        "resized": resized,
    }


def assistant_mask_source(tokenizer, start: Path) -> str:
    """How SFT will find the assistant's tokens (its loss mask) in the chat template: the
    template's own `{% generation %}` marks, or trl's training version of a template it knows
    (Qwen, Llama 3, Gemma, …); any other template is refused before training starts."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return "the template's {% generation %} marks"
    try:
        get_training_chat_template(tokenizer)
    except ValueError:
        raise ValueError(
            f"the chat template of {start} has no {{% generation %}} marks and trl knows no "
            "training version of it, so SFT cannot tell the assistant's tokens from the rest: "
            "wrap each assistant turn's content and end token in {% generation %}…"
            "{% endgeneration %} in its chat template (tokenizer_config.json or "
            "chat_template.jinja), or remove the template to get xiaophi's."
        ) from None
    return "trl's training version of the base's template"


def grow_embeddings(model, size: int) -> list[str]:
    """Embedding rows for `size` tokens, the new ones the mean of the old; returns the names of
    the modules that grew (they must train in full beside a LoRA adapter)."""
    inputs = model.get_input_embeddings()
    old = inputs.weight.shape[0]
    if size <= old:
        return []
    model.resize_token_embeddings(size, mean_resizing=False)
    names = []
    with torch.no_grad():
        for module in {model.get_input_embeddings(), model.get_output_embeddings()} - {None}:
            module.weight[old:] = module.weight[:old].mean(0, keepdim=True)
            bias = getattr(module, "bias", None)
            if bias is not None and bias.shape[0] > old:
                bias[old:] = bias[:old].mean()
            names.append(_module_name(model, module))
    return sorted(names)


def _module_name(model, module) -> str:
    return next(name for name, m in model.named_modules() if m is module).rsplit(".", 1)[-1]
