"""Recipes: pydantic models, one per section, loaded from YAML in `training/recipes/` and
overridable by CLI flags `--<section>.<field>` (e.g. `--pretrain.max_steps 50`).

Each field's `description` is its flag's help. Checks within a section live in its validators,
checks across sections in `Recipe`'s; every error names the flag to change.

Kept as one module: the sections refer to each other (cross-section checks, the fingerprint's
runtime knobs, the flag generator walks them all), and a recipe is read here top to bottom.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

RECIPES_DIR = Path(__file__).parent / "recipes"

# The causal LM architectures `training.model_factory` builds, and the sentence embedders
# `training.embedder` trains: two different choices, two names.
ModelArch = Literal["phi", "llama", "qwen2"]
EmbedderArch = Literal["static", "bert"]
EvalModel = Literal["untrained", "base", "pretrain", "sft", "dpo"]


def _as_list(value: Any) -> Any:
    # `--data.pretrain a.jsonl` means a list of one file
    return list(value) if isinstance(value, (list, tuple)) else [value]


StrList = Annotated[list[str], BeforeValidator(_as_list)]
AtLeastOne = Annotated[int, Field(ge=1)]


class Section(BaseModel):
    """A recipe section: unknown fields refused, YAML/CLI values converted to the field's type
    (numbers to text where text is wanted), assignments checked like loaded values."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_true_false_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads `max_steps: true` as 1; a recipe that says so has a typo, not a number.
        if isinstance(value, bool) and bool not in _types_of(cls.model_fields[info.field_name]):
            flag = f"--{_section_name(cls)}.{info.field_name}"
            raise ValueError(f"{flag} takes a value, not {value!r}; fix {flag}.")
        return value


def _section_name(section: type[Section]) -> str:
    return next(n for n, f in Recipe.model_fields.items() if f.annotation is section)


def _types_of(field: FieldInfo) -> set[Any]:
    """The plain types a field accepts (`int | None` → {int, NoneType})."""
    found, todo = set(), [field.annotation]
    while todo:
        annotation = todo.pop()
        args = get_args(annotation)
        if args and get_origin(annotation) is not Literal:
            todo.extend(args)
        else:
            found.add(annotation)
    return found


class DataConfig(Section):
    pretrain: StrList = Field(
        ["data/demo/pretrain.jsonl"],
        description="Pretraining files: txt (one document per line), jsonl or parquet with a "
        "`text` field.",
    )
    pretrain_eval: str = Field(
        "data/demo/pretrain_eval.jsonl",
        description="Held-out pretraining text for perplexity and chars/token.",
    )
    sft: StrList = Field(
        ["data/demo/sft.jsonl"],
        description="SFT files: jsonl/parquet with `messages`, or `prompt` + `completion`.",
    )
    sft_repeat: list[int] = Field(
        [],
        description="How many times each `sft` file's conversations count when SFT draws its "
        "sample (one whole number >= 1 per file; empty = 1 each): a small file, such as "
        "tool-use conversations, gets a larger share.",
    )
    sft_eval: str = Field(
        "data/demo/sft_eval.jsonl", description="Held-out SFT conversations for eval loss."
    )
    dpo: StrList = Field(
        [],
        description="Optional DPO files with `prompt`, `chosen`, `rejected`; empty = generate "
        "them (dpo-data stage).",
    )
    probe: str = Field(
        "data/demo/idiom_probe.jsonl",
        description="Held-out questions (`prompt`, `completion`) the final model is asked in the "
        "summary.",
    )
    num_proc: int = Field(2, description="Processes for `datasets.map` tokenization.")

    @model_validator(mode="after")
    def _one_repeat_per_sft_file(self) -> DataConfig:
        if self.sft_repeat and (len(self.sft_repeat) != len(self.sft) or min(self.sft_repeat) < 1):
            raise ValueError(
                f"data.sft_repeat={self.sft_repeat} needs one whole number >= 1 for each of the "
                f"{len(self.sft)} data.sft files ({', '.join(self.sft)}), or none at all."
            )
        return self


class TokenizerConfig(Section):
    vocab_size: int = Field(8000, description="BPE vocabulary size, special tokens included.")
    min_frequency: int = Field(2, description="Minimum pair frequency for a merge.")
    max_chars: int | None = Field(
        None, description="Train on at most this many characters (None = all)."
    )
    chat_files: StrList = Field(
        [],
        description="SFT files whose conversations, as the chat template renders them (tools, "
        "calls and results included), the tokenizer learns from too: what a chat model must "
        "write (tool-call JSON, role text) becomes few tokens.",
    )
    chat_max_chars: int = Field(
        400_000, description="At most this many characters of rendered `chat_files`."
    )

    @field_validator("vocab_size")
    @classmethod
    def _fits_byte_symbols(cls, value: int) -> int:
        from training.tokenizer import check_vocab_size

        check_vocab_size(value)
        return value


class ModelConfig(Section):
    arch: ModelArch = Field("phi", description="Architecture: phi, llama or qwen2.")
    hidden_size: int = Field(256, description="Model width.")
    num_layers: int = Field(4, description="Transformer blocks.")
    num_heads: int = Field(4, description="Attention heads.")
    num_kv_heads: int | None = Field(
        None, description="Key/value heads for llama/qwen2 (None = num_heads)."
    )
    intermediate_size: int = Field(1024, description="Feed-forward width.")
    max_position_embeddings: int = Field(512, description="Longest sequence the model accepts.")
    vocab_multiple: int = Field(64, description="Embedding rows are padded to a multiple of this.")
    rope_theta: float = Field(10000.0, description="Rotary base.")
    attn_implementation: Literal["sdpa", "eager"] = Field("sdpa", description="sdpa or eager.")
    tie_word_embeddings: bool = Field(False, description="Share input and output embeddings.")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads="
                f"{self.num_heads}; change --model.hidden_size or --model.num_heads."
            )
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.num_heads={self.num_heads} is not a multiple of model.num_kv_heads="
                f"{self.num_kv_heads}; change --model.num_kv_heads."
            )
        return self


class LoraConfig(BaseModel):
    """A LoRA adapter for one Trainer stage (peft): only the adapter (and `modules_to_save`)
    trains; the stage saves the adapter and the model with it merged."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    r: AtLeastOne = Field(8, description="Rank of the adapter's matrices.")
    alpha: float = Field(16.0, gt=0, description="Scaling numerator (the update is alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: StrList = Field(
        [],
        description="Module names the adapter wraps; empty = the architecture's attention and "
        "feed-forward projections (training.lora.DEFAULT_TARGETS; all linear layers for others).",
    )
    modules_to_save: StrList = Field(
        [],
        description="Modules trained in full beside the adapter (e.g. embed_tokens and lm_head "
        "after the vocabulary grew); empty = those resized embeddings, if any.",
    )
    qlora: bool = Field(
        False, description="Load the frozen base in 4 bit (bitsandbytes NF4; CUDA only)."
    )


class TrainConfig(Section):
    """Fields shared by the Trainer-based stages."""

    max_steps: AtLeastOne = Field(100, description="Optimizer steps.")
    micro_batch: AtLeastOne = Field(8, description="Sequences per device per forward pass.")
    grad_accum: AtLeastOne = Field(1, description="Gradient accumulation steps.")
    lr: float = Field(1e-3, description="Peak learning rate.")
    min_lr_ratio: float = Field(0.1, description="Cosine floor as a fraction of the peak LR.")
    warmup_steps: int = Field(10, description="Linear warm-up steps.")
    schedule: Literal["cosine", "wsd"] = Field(
        "cosine",
        description="LR schedule after warm-up: cosine (down to min_lr_ratio) or wsd "
        "(warmup-stable-decay: flat at the peak, then a cosine decay over the last "
        "decay_fraction of the steps).",
    )
    decay_fraction: float = Field(
        0.2, gt=0, le=1, description="wsd only: share of the steps spent decaying."
    )
    weight_decay: float = Field(0.1, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, description="Gradient clipping.")
    optim: str = Field(
        "auto",
        description="auto = fused AdamW on CUDA, AdamW on CPU; or any HF optimizer name "
        "(adafactor, adamw_torch, ...).",
    )
    seq_len: AtLeastOne = Field(256, description="Tokens per sequence.")
    eval_steps: int = Field(50, description="Evaluate every N steps (0 = only at the end).")
    save_steps: int = Field(50, description="Checkpoint every N steps.")
    logging_steps: int = Field(5, description="Log every N steps.")
    seed: int = Field(42, description="Seed for weights and data order.")
    torch_compile: bool = Field(False, description="torch.compile the model (GPU recommended).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    lora: LoraConfig | None = Field(
        None,
        description="Train a LoRA adapter instead of every weight, e.g. '{r: 16, alpha: 32}' "
        "(null = all weights). The stage folder holds the merged model and `adapter/`.",
    )


class PretrainConfig(TrainConfig):
    enabled: bool = Field(
        True,
        description="Run the pretraining stage; false only with `base` (SFT starts from the base).",
    )
    eval_max_blocks: int = Field(64, description="Held-out blocks for perplexity.")
    max_time_s: float = Field(
        0,
        ge=0,
        description="Seconds the training loop may take (0 = no limit): it stops at max_steps or "
        "when this runs out, the wsd decay fitted to end by then (training.time_budget); the "
        "report says how many steps ran.",
    )

    @model_validator(mode="after")
    def _budget_needs_wsd(self) -> PretrainConfig:
        if self.max_time_s and self.schedule != "wsd":
            raise ValueError(
                "pretrain.max_time_s needs --pretrain.schedule wsd (a budget moves the decay to "
                "wherever the time runs out; cosine decays over max_steps); or set "
                "--pretrain.max_time_s 0."
            )
        return self


class SFTStageConfig(TrainConfig):
    max_steps: AtLeastOne = Field(100, description="Optimizer steps.")
    lr: float = Field(5e-4, description="Peak learning rate.")
    packing: bool = Field(False, description="Pack conversations into seq_len blocks.")
    max_train_samples: int = Field(
        0,
        ge=0,
        description="Train on a random sample (seeded by `seed`) of this many conversations; "
        "0 = all. Tokenising a large file costs time even when max_steps reaches only a "
        "fraction of it.",
    )
    max_eval_samples: int = Field(256, description="Held-out conversations for eval loss.")


class DPOStageConfig(TrainConfig):
    max_steps: AtLeastOne = Field(50, description="Optimizer steps.")
    lr: float = Field(5e-5, description="Peak learning rate.")
    beta: float = Field(0.1, description="DPO temperature.")
    num_prompts: int = Field(
        256, description="Training prompts whose rejected answer the SFT model generates."
    )
    gen_max_new_tokens: int = Field(64, description="Max tokens of each generated rejected answer.")
    gen_temperature: float = Field(
        0.8, description="Sampling temperature for rejected answers (0 = greedy)."
    )
    gen_batch_size: int = Field(32, description="Prompts per generate call.")


class EmbedderConfig(Section):
    enabled: bool = Field(
        True, description="Train the offline default sentence embedder in the pipeline."
    )
    pairs: str = Field(
        "data/demo/embedder_pairs.jsonl",
        description="Training pairs: jsonl with `anchor` and `positive`.",
    )
    eval_pairs: str = Field(
        "data/demo/embedder_pairs_eval.jsonl",
        description="Held-out pairs for the retrieval report (optional file).",
    )
    arch: EmbedderArch = Field(
        "static",
        description="static: a trained bag of token embeddings (fast on CPU); bert: a small "
        "transformer.",
    )
    tokenizer: Literal["char", "bpe"] = Field(
        "char",
        description="The embedder's own tokenizer: char (one token per character) or bpe.",
    )
    vocab_size: int = Field(6000, description="Vocabulary of the embedder's own tokenizer.")
    ict_texts: str = Field(
        "data/demo/pretrain.jsonl",
        description="Text file (jsonl `text` or txt) for inverse-cloze pairs: a sentence ↔ the "
        "text around it.",
    )
    ict_pairs: int = Field(
        80000, description="Most inverse-cloze pairs added to the training pairs (0 = none)."
    )
    exclude_bench_held_out: bool = Field(
        True,
        description="Drop pairs and texts about the idioms `make bench-rag` queries "
        "(sha1 % 10 == 0).",
    )
    num_threads: int = Field(
        0,
        description="Torch intra-op threads while training the embedder (0 = what the free cores allow).",
    )
    max_steps: int = Field(800, description="Training steps.")
    batch_size: int = Field(1024, description="Pairs per batch (in-batch negatives).")
    hidden_size: int = Field(256, description="Embedding width (static) or encoder width (bert).")
    num_layers: int = Field(2, description="Encoder layers (bert only).")
    num_heads: int = Field(4, description="Encoder heads (bert only).")
    max_seq_length: int = Field(
        128, description="Tokens per sentence (bert only; static reads whole texts)."
    )
    lr: float = Field(
        0.05,
        description="Peak learning rate (static embeddings want a far higher one than bert).",
    )
    sif_weight: float = Field(
        3e-3,
        description="static only: after training, scale each token's vector by a / (a + p), "
        "p = the token's share of the training texts (smooth inverse frequency; 0 = off).",
    )


def _positive_float(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number > 0 else None


class DecodingConfig(Section):
    tune: bool = Field(
        True,
        description="Choose the decoding defaults written into the sft and dpo checkpoints' "
        "generation_config.json on the held-out dev probes (data.probe).",
    )
    probes: int = Field(50, description="Dev probe questions the choice is made on.")
    max_new_tokens: int = Field(
        64, description="Token limit of each probe answer (a loop runs into it)."
    )
    repetition_penalties: StrList = Field(
        ["1.0", "1.1", "1.2", "1.3", "1.5"], description="Repetition penalties tried (greedy)."
    )
    sampling: StrList = Field(
        ["0.7:0.9"],
        description="temperature:top_p pairs also tried, each with every repetition penalty "
        "(seeded samples).",
    )
    f1_tolerance: float = Field(
        0.01,
        description="A candidate may lose at most this much character F1 against plain greedy.",
    )

    @field_validator("repetition_penalties")
    @classmethod
    def _positive_penalties(cls, values: list[str]) -> list[str]:
        for value in values:
            if _positive_float(value) is None:
                raise ValueError(
                    f"decoding.repetition_penalties has {value!r}; give positive numbers "
                    "(--decoding.repetition_penalties)."
                )
        return values

    @field_validator("sampling")
    @classmethod
    def _sampling_pairs(cls, pairs: list[str]) -> list[str]:
        for pair in pairs:
            t, _, p = pair.partition(":")
            if _positive_float(t) is None or not 0 < (_positive_float(p) or 0) <= 1:
                raise ValueError(
                    f"decoding.sampling has {pair!r}; give temperature:top_p pairs like 0.7:0.9 "
                    "(--decoding.sampling)."
                )
        return pairs


class EvalConfig(Section):
    enabled: bool = Field(True, description="Run the eval stage at the end of the pipeline.")
    heldout: str = Field(
        "data/demo/heldout.jsonl",
        description="Held-out items (jsonl: kind idiom/word/xiehouyu, subject, answer, split "
        "dev/test).",
    )
    models: Annotated[list[EvalModel], BeforeValidator(_as_list)] = Field(
        ["untrained", "pretrain", "dpo"],
        description="What the stage evaluates: untrained (fresh weights, same config and seed), "
        "base (the recipe's base; always scored first when there is one) and any finished stage "
        "folder (pretrain, sft, dpo; pretrain is left out when --pretrain.enabled is false).",
    )
    tasks: StrList = Field(
        ["xiaophi"], description="lm-eval tasks: xiaophi (all local tasks) or names."
    )
    split: Literal["dev", "test"] = Field(
        "test", description="Held-out split reported: test (never used for a choice) or dev."
    )
    limit: int = Field(0, description="Items per task (0 = the whole split).")
    bpc_max_chars: int = Field(
        0, description="Characters of held-out text for bits per character (0 = all)."
    )
    batch_size: int = Field(32, description="Sequences per forward pass.")
    max_new_tokens: int = Field(64, description="Token limit of generated answers.")


class ExportConfig(Section):
    gguf: StrList = Field(
        [],
        description="GGUF files the export stage writes of the run's chat model for llama.cpp "
        "and ollama, each with an ollama Modelfile: f32, f16, bf16, q8_0, or a llama.cpp "
        "quantization such as q4_k_m (needs llama-cpp-python). Empty: no export stage.",
    )

    @field_validator("gguf")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        from training.export_gguf import OUTTYPES, QUANTIZE_TYPES

        known = (*OUTTYPES, *QUANTIZE_TYPES)
        unknown = [v for v in value if v not in known]
        if unknown:
            raise ValueError(
                f"export.gguf has {', '.join(unknown)}; choose from {', '.join(known)}"
            )
        return value


# Knobs that change how fast a run goes, not what it produces: left out of the fingerprint.
_RUNTIME_KNOBS = {
    "data": ("num_proc",),
    "eval": ("batch_size",),
    "embedder": ("num_threads",),
    **{
        stage: (
            "eval_steps",
            "save_steps",
            "logging_steps",
            "torch_compile",
            "gradient_checkpointing",
        )
        for stage in ("pretrain", "sft", "dpo")
    },
}


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)

    name: str = Field("custom", description="The recipe's name (its YAML file's stem).")
    base: str | None = Field(
        None,
        description="A Hugging Face causal-LM folder (with its tokenizer) to start from instead "
        "of nothing: no tokenizer stage, pretraining continues from it (or is skipped with "
        "--pretrain.enabled false) and SFT starts from it. The run records a digest of its "
        "weight and tokenizer files; a changed base is refused like a changed recipe.",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig)
    dpo: DPOStageConfig = Field(default_factory=DPOStageConfig)
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @model_validator(mode="after")
    def _sequences_fit_the_model(self) -> Recipe:
        if self.base is not None:  # the base's own positions: checked before its stages run
            return self
        longest = self.model.max_position_embeddings
        for stage in ("pretrain", "sft", "dpo"):
            seq_len = getattr(self, stage).seq_len
            if seq_len > longest:
                raise ValueError(
                    f"{stage}.seq_len={seq_len} exceeds model.max_position_embeddings={longest}; "
                    f"lower --{stage}.seq_len or raise --model.max_position_embeddings."
                )
        return self

    @model_validator(mode="after")
    def _a_base_for_what_needs_one(self) -> Recipe:
        if self.base is None and not self.pretrain.enabled:
            raise ValueError(
                "--pretrain.enabled false leaves SFT nothing to start from; give --base DIR (a "
                "model to start from) or set --pretrain.enabled true."
            )
        if self.base is None and self.pretrain.lora is not None:
            raise ValueError(
                "--pretrain.lora trains an adapter on frozen weights, which from nothing are "
                "random; give --base DIR or set --pretrain.lora null."
            )
        return self

    def check(self) -> Recipe:
        """Validate again as a whole: sections assigned one field at a time skip the checks
        across sections."""
        recipe_from_dict(self.to_dict())
        return self

    def to_dict(self) -> dict:
        return self.model_dump()

    def fingerprint(self) -> dict:
        """The fields that decide what a run produces (runtime knobs such as num_proc left out)."""
        d = self.to_dict()
        d.pop("name", None)
        if d["base"] is not None:
            from training.base_model import base_digest

            d["base"] = {"path": d["base"], "digest": base_digest(d["base"])}
        return without_runtime_knobs(d)


def without_runtime_knobs(fingerprint: dict) -> dict:
    """`fingerprint` less the runtime knobs — also those a stored run's fingerprint kept because
    they became knobs after it was written."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in fingerprint.items()}
    for section, knobs in _RUNTIME_KNOBS.items():
        for knob in knobs:
            d.get(section, {}).pop(knob, None)
    return d


SECTION_MODELS: dict[str, type[Section]] = {
    name: info.annotation
    for name, info in Recipe.model_fields.items()
    if isinstance(info.annotation, type) and issubclass(info.annotation, Section)
}
#: Recipe fields outside any section that a flag sets (`--base DIR`).
TOP_LEVEL_FLAGS = ("base",)


def recipe_from_dict(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Build and check a Recipe from nested dicts; errors name the section, field and flag."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise ValueError(readable_errors(err, source)) from None


def readable_errors(err: ValidationError, source: str) -> str:
    """pydantic's errors as sentences that name the flag to change."""
    unknown: dict[str, list[str]] = {}
    messages: list[str] = []
    for e in err.errors():
        names = [str(p) for p in e["loc"] if not isinstance(p, int)]
        dotted = ".".join(names)
        kind, ctx, value = e["type"], e.get("ctx", {}), e.get("input")
        if kind == "extra_forbidden":
            unknown.setdefault(".".join(names[:-1]), []).append(names[-1])
        elif kind == "value_error":
            messages.append(str(ctx["error"]))
        elif kind == "literal_error":
            said = " has " if len(names) < len(e["loc"]) else "="  # a list item, or the value
            messages.append(f"{dotted}{said}{value!r}; set --{dotted} to {ctx['expected']}.")
        elif kind in _BOUNDS:
            bound = next(ctx[k] for k in ("ge", "gt", "le", "lt") if k in ctx)
            messages.append(f"--{dotted} must be {_BOUNDS[kind]} {bound} (got {value!r}).")
        else:
            messages.append(
                f"{dotted}={value!r} is not valid ({e['msg'][0].lower()}{e['msg'][1:]}); "
                f"fix --{dotted}."
            )
    for section, fields in unknown.items():
        if not section:
            messages.insert(
                0,
                f"{source}: unknown section(s) {', '.join(map(repr, fields))}; known: name, base, "
                f"{', '.join(SECTION_MODELS)}.",
            )
        else:
            known = (
                sorted(SECTION_MODELS[section].model_fields) if section in SECTION_MODELS else []
            )
            messages.insert(
                0,
                f"{source}: unknown field(s) {', '.join(sorted(fields))} in section "
                f"{section!r}; known: {', '.join(known)}.",
            )
    return " ".join(messages)


_BOUNDS = {
    "greater_than_equal": "at least",
    "greater_than": "greater than",
    "less_than_equal": "at most",
    "less_than": "less than",
}


def resolve_recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise FileNotFoundError(
        f"recipe {name_or_path!r} not found: give a YAML path or one of: {known}."
    )


def load_recipe(name_or_path: str, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load a recipe by name (`tiny`, `seed`) or YAML path, apply `section.field` overrides, check."""
    path = resolve_recipe_path(name_or_path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for dotted, value in (overrides or {}).items():
        section, _, name = dotted.partition(".")
        if not name:  # a top-level field
            raw[section] = value
            continue
        if raw.get(section) is None:
            raw[section] = {}
        raw[section][name] = value
    return recipe_from_dict(raw, source=str(path))


def field_flags() -> list[tuple[str, FieldInfo]]:
    """Every (`section.field`, its pydantic field) a CLI can override, in recipe order."""
    return [(name, Recipe.model_fields[name]) for name in TOP_LEVEL_FLAGS] + [
        (f"{section}.{name}", info)
        for section, cls in SECTION_MODELS.items()
        for name, info in cls.model_fields.items()
    ]


def parse_flag_value(raw: str, info: FieldInfo) -> Any:
    """A CLI string as the recipe would hold it: text fields as given, the rest with YAML rules
    (true, null, 1e-4, [a, b]); the section model converts and checks the result."""
    text = info.annotation is str or (
        get_origin(info.annotation) is Literal
        and all(isinstance(a, str) for a in get_args(info.annotation))
    )
    return raw if text else yaml.safe_load(raw)
