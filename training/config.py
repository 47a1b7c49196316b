"""Recipes: typed dataclasses, loaded from YAML in `training/recipes/`, overridable by CLI flags.

Every field becomes a flag `--<section>.<field>` (e.g. `--pretrain.max_steps 50`). Checks that
span fields live in `Recipe.validate` and name the flag to change.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RECIPES_DIR = Path(__file__).parent / "recipes"
ARCHITECTURES = ("phi", "llama", "qwen2")


def _f(default: Any, help: str, **kw) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class DataConfig:
    pretrain: list[str] = _f(
        ["data/demo/pretrain.jsonl"],
        "Pretraining files: txt (one document per line), jsonl or parquet with a `text` field.",
    )
    pretrain_eval: str = _f(
        "data/demo/pretrain_eval.jsonl", "Held-out pretraining text for perplexity and chars/token."
    )
    sft: list[str] = _f(
        ["data/demo/sft.jsonl"],
        "SFT files: jsonl/parquet with `messages`, or `prompt` + `completion`.",
    )
    sft_eval: str = _f("data/demo/sft_eval.jsonl", "Held-out SFT conversations for eval loss.")
    dpo: list[str] = _f(
        [],
        "Optional DPO files with `prompt`, `chosen`, `rejected`; empty = generate them (dpo-data stage).",
    )
    probe: str = _f(
        "data/demo/idiom_probe.jsonl",
        "Held-out questions (`prompt`, `completion`) the final model is asked in the summary.",
    )
    num_proc: int = _f(2, "Processes for `datasets.map` tokenization.")


@dataclass
class TokenizerConfig:
    vocab_size: int = _f(8000, "BPE vocabulary size, special tokens included.")
    min_frequency: int = _f(2, "Minimum pair frequency for a merge.")
    max_chars: int | None = _f(None, "Train on at most this many characters (None = all).")


@dataclass
class ModelConfig:
    arch: str = _f("phi", "Architecture: phi, llama or qwen2.")
    hidden_size: int = _f(256, "Model width.")
    num_layers: int = _f(4, "Transformer blocks.")
    num_heads: int = _f(4, "Attention heads.")
    num_kv_heads: int | None = _f(None, "Key/value heads for llama/qwen2 (None = num_heads).")
    intermediate_size: int = _f(1024, "Feed-forward width.")
    max_position_embeddings: int = _f(512, "Longest sequence the model accepts.")
    vocab_multiple: int = _f(64, "Embedding rows are padded to a multiple of this.")
    rope_theta: float = _f(10000.0, "Rotary base.")
    attn_implementation: str = _f("sdpa", "sdpa or eager.")
    tie_word_embeddings: bool = _f(False, "Share input and output embeddings.")


@dataclass
class TrainConfig:
    """Fields shared by the Trainer-based stages."""

    max_steps: int = _f(100, "Optimizer steps.")
    micro_batch: int = _f(8, "Sequences per device per forward pass.")
    grad_accum: int = _f(1, "Gradient accumulation steps.")
    lr: float = _f(1e-3, "Peak learning rate.")
    min_lr_ratio: float = _f(0.1, "Cosine floor as a fraction of the peak LR.")
    warmup_steps: int = _f(10, "Linear warm-up steps.")
    schedule: str = _f(
        "cosine",
        "LR schedule after warm-up: cosine (down to min_lr_ratio) or wsd (warmup-stable-decay: "
        "flat at the peak, then a cosine decay over the last decay_fraction of the steps).",
    )
    decay_fraction: float = _f(0.2, "wsd only: share of the steps spent decaying.")
    weight_decay: float = _f(0.1, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping.")
    optim: str = _f(
        "auto",
        "auto = fused AdamW on CUDA, AdamW on CPU; or any HF optimizer name (adafactor, adamw_torch, ...).",
    )
    seq_len: int = _f(256, "Tokens per sequence.")
    eval_steps: int = _f(50, "Evaluate every N steps (0 = only at the end).")
    save_steps: int = _f(50, "Checkpoint every N steps.")
    logging_steps: int = _f(5, "Log every N steps.")
    seed: int = _f(42, "Seed for weights and data order.")
    torch_compile: bool = _f(False, "torch.compile the model (GPU recommended).")
    gradient_checkpointing: bool = _f(False, "Trade compute for memory.")


@dataclass
class PretrainConfig(TrainConfig):
    eval_max_blocks: int = _f(64, "Held-out blocks for perplexity.")


@dataclass
class SFTStageConfig(TrainConfig):
    max_steps: int = _f(100, "Optimizer steps.")
    lr: float = _f(5e-4, "Peak learning rate.")
    packing: bool = _f(False, "Pack conversations into seq_len blocks.")
    max_eval_samples: int = _f(256, "Held-out conversations for eval loss.")


@dataclass
class DPOStageConfig(TrainConfig):
    max_steps: int = _f(50, "Optimizer steps.")
    lr: float = _f(5e-5, "Peak learning rate.")
    beta: float = _f(0.1, "DPO temperature.")
    num_prompts: int = _f(256, "Training prompts whose rejected answer the SFT model generates.")
    gen_max_new_tokens: int = _f(64, "Max tokens of each generated rejected answer.")
    gen_temperature: float = _f(0.8, "Sampling temperature for rejected answers (0 = greedy).")
    gen_batch_size: int = _f(32, "Prompts per generate call.")


@dataclass
class EmbedderConfig:
    enabled: bool = _f(True, "Train the offline default sentence embedder in the pipeline.")
    pairs: str = _f(
        "data/demo/embedder_pairs.jsonl", "Training pairs: jsonl with `anchor` and `positive`."
    )
    eval_pairs: str = _f(
        "data/demo/embedder_pairs_eval.jsonl",
        "Held-out pairs for the retrieval report (optional file).",
    )
    arch: str = _f(
        "static",
        "static: a trained bag of token embeddings (fast on CPU); bert: a small transformer.",
    )
    tokenizer: str = _f(
        "char", "The embedder's own tokenizer: char (one token per character) or bpe."
    )
    vocab_size: int = _f(6000, "Vocabulary of the embedder's own tokenizer.")
    ict_texts: str = _f(
        "data/demo/pretrain.jsonl",
        "Text file (jsonl `text` or txt) for inverse-cloze pairs: a sentence ↔ the text around it.",
    )
    ict_pairs: int = _f(80000, "Most inverse-cloze pairs added to the training pairs (0 = none).")
    exclude_bench_held_out: bool = _f(
        True,
        "Drop pairs and texts about the idioms `make bench-rag` queries (sha1 % 10 == 0).",
    )
    num_threads: int = _f(1, "Torch intra-op threads while training the embedder.")
    max_steps: int = _f(800, "Training steps.")
    batch_size: int = _f(1024, "Pairs per batch (in-batch negatives).")
    hidden_size: int = _f(256, "Embedding width (static) or encoder width (bert).")
    num_layers: int = _f(2, "Encoder layers (bert only).")
    num_heads: int = _f(4, "Encoder heads (bert only).")
    max_seq_length: int = _f(128, "Tokens per sentence (bert only; static reads whole texts).")
    lr: float = _f(0.05, "Peak learning rate (static embeddings want a far higher one than bert).")
    sif_weight: float = _f(
        3e-3,
        "static only: after training, scale each token's vector by a / (a + p), p = the token's "
        "share of the training texts (smooth inverse frequency; 0 = off).",
    )


@dataclass
class DecodingConfig:
    tune: bool = _f(
        True,
        "Choose the decoding defaults written into the sft and dpo checkpoints' "
        "generation_config.json on the held-out dev probes (data.probe).",
    )
    probes: int = _f(50, "Dev probe questions the choice is made on.")
    max_new_tokens: int = _f(64, "Token limit of each probe answer (a loop runs into it).")
    repetition_penalties: list[str] = _f(
        ["1.0", "1.1", "1.2", "1.3", "1.5"], "Repetition penalties tried (greedy)."
    )
    sampling: list[str] = _f(
        ["0.7:0.9"],
        "temperature:top_p pairs also tried, each with every repetition penalty (seeded samples).",
    )
    f1_tolerance: float = _f(
        0.01, "A candidate may lose at most this much character F1 against plain greedy."
    )


@dataclass
class EvalConfig:
    enabled: bool = _f(True, "Run the eval stage at the end of the pipeline.")
    heldout: str = _f(
        "data/demo/heldout.jsonl",
        "Held-out items (jsonl: kind idiom/word/xiehouyu, subject, answer, split dev/test).",
    )
    models: list[str] = _f(
        ["untrained", "pretrain", "dpo"],
        "What the stage evaluates: untrained (fresh weights, same config and seed) and any "
        "finished stage folder (pretrain, sft, dpo).",
    )
    tasks: list[str] = _f(["xiaophi"], "lm-eval tasks: xiaophi (all local tasks) or names.")
    split: str = _f("test", "Held-out split reported: test (never used for a choice) or dev.")
    limit: int = _f(0, "Items per task (0 = the whole split).")
    bpc_max_chars: int = _f(0, "Characters of held-out text for bits per character (0 = all).")
    batch_size: int = _f(32, "Sequences per forward pass.")
    max_new_tokens: int = _f(64, "Token limit of generated answers.")


@dataclass
class Recipe:
    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> Recipe:
        m = self.model
        if m.arch not in ARCHITECTURES:
            raise ValueError(
                f"model.arch={m.arch!r} is unknown; set --model.arch to one of {', '.join(ARCHITECTURES)}."
            )
        if m.hidden_size % m.num_heads:
            raise ValueError(
                f"model.hidden_size={m.hidden_size} is not divisible by model.num_heads={m.num_heads}; change --model.hidden_size or --model.num_heads."
            )
        if m.num_kv_heads is not None and m.num_heads % m.num_kv_heads:
            raise ValueError(
                f"model.num_heads={m.num_heads} is not a multiple of model.num_kv_heads={m.num_kv_heads}; change --model.num_kv_heads."
            )
        from training.tokenizer import MIN_VOCAB_SIZE

        if self.tokenizer.vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(
                f"tokenizer.vocab_size={self.tokenizer.vocab_size} cannot hold the 256 byte symbols and special tokens; set --tokenizer.vocab_size to at least {MIN_VOCAB_SIZE}."
            )
        e = self.embedder
        if e.arch not in ("static", "bert"):
            raise ValueError(f"embedder.arch={e.arch!r}; set --embedder.arch to static or bert.")
        if e.tokenizer not in ("char", "bpe"):
            raise ValueError(
                f"embedder.tokenizer={e.tokenizer!r}; set --embedder.tokenizer to char or bpe."
            )
        if self.eval.split not in ("dev", "test"):
            raise ValueError(f"eval.split={self.eval.split!r}; set --eval.split to dev or test.")
        unknown = set(self.eval.models) - {"untrained", "pretrain", "sft", "dpo"}
        if unknown:
            raise ValueError(
                f"eval.models has {', '.join(sorted(unknown))}; use untrained, pretrain, sft or dpo."
            )
        for value in self.decoding.repetition_penalties:
            if _positive_float(value) is None:
                raise ValueError(
                    f"decoding.repetition_penalties has {value!r}; give positive numbers."
                )
        for pair in self.decoding.sampling:
            t, _, p = pair.partition(":")
            if _positive_float(t) is None or not 0 < (_positive_float(p) or 0) <= 1:
                raise ValueError(
                    f"decoding.sampling has {pair!r}; give temperature:top_p pairs like 0.7:0.9."
                )
        for stage in ("pretrain", "sft", "dpo"):
            cfg: TrainConfig = getattr(self, stage)
            if cfg.schedule not in ("cosine", "wsd"):
                raise ValueError(
                    f"{stage}.schedule={cfg.schedule!r}; set --{stage}.schedule to cosine or wsd."
                )
            if not 0 < cfg.decay_fraction <= 1:
                raise ValueError(
                    f"{stage}.decay_fraction must be in (0, 1]; fix --{stage}.decay_fraction."
                )
            if cfg.seq_len > m.max_position_embeddings:
                raise ValueError(
                    f"{stage}.seq_len={cfg.seq_len} exceeds model.max_position_embeddings={m.max_position_embeddings}; "
                    f"lower --{stage}.seq_len or raise --model.max_position_embeddings."
                )
            for name in ("max_steps", "micro_batch", "grad_accum", "seq_len"):
                if getattr(cfg, name) < 1:
                    raise ValueError(f"{stage}.{name} must be at least 1; fix --{stage}.{name}.")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> dict:
        """The fields that decide what a run produces (runtime knobs such as num_proc left out)."""
        d = self.to_dict()
        d.pop("name", None)
        d["data"].pop("num_proc", None)
        d["eval"].pop("batch_size", None)
        for stage in ("pretrain", "sft", "dpo"):
            for knob in (
                "eval_steps",
                "save_steps",
                "logging_steps",
                "torch_compile",
                "gradient_checkpointing",
            ):
                d[stage].pop(knob, None)
        return d


SECTIONS = {f.name: f.type for f in dataclasses.fields(Recipe) if f.name != "name"}
_SECTION_CLASSES = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "model": ModelConfig,
    "pretrain": PretrainConfig,
    "sft": SFTStageConfig,
    "dpo": DPOStageConfig,
    "embedder": EmbedderConfig,
    "decoding": DecodingConfig,
    "eval": EvalConfig,
}


def _positive_float(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number > 0 else None


def recipe_from_dict(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Build a Recipe from nested dicts, rejecting unknown sections and fields by name."""
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "name":
            kwargs["name"] = str(value)
            continue
        if key not in _SECTION_CLASSES:
            raise ValueError(
                f"{source}: unknown section {key!r}; known: name, {', '.join(_SECTION_CLASSES)}."
            )
        cls = _SECTION_CLASSES[key]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(value or {}) - known
        if unknown:
            raise ValueError(
                f"{source}: unknown field(s) {', '.join(sorted(unknown))} in section {key!r}; known: {', '.join(sorted(known))}."
            )
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs[key] = cls(
            **{k: coerce_field_value(v, fields[k], f"{key}.{k}") for k, v in (value or {}).items()}
        )
    return Recipe(**kwargs)


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
    """Load a recipe by name (`tiny`, `seed`) or YAML path, apply `section.field` overrides, validate."""
    path = resolve_recipe_path(name_or_path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for dotted, value in (overrides or {}).items():
        section, _, name = dotted.partition(".")
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        raw[section][name] = value
    return recipe_from_dict(raw, source=str(path)).validate()


def field_flags() -> list[tuple[str, dataclasses.Field, type]]:
    """Every (`section.field`, dataclass field, section class) a CLI can override."""
    out = []
    for section, cls in _SECTION_CLASSES.items():
        for f in dataclasses.fields(cls):
            out.append((f"{section}.{f.name}", f, cls))
    return out


def parse_flag_value(raw: str, f: dataclasses.Field) -> Any:
    """Parse a CLI string with YAML rules (true, null, [a, b]); the field's type decides the rest."""
    return raw if str(f.type) == "str" else yaml.safe_load(raw)


def coerce_field_value(value: Any, f: dataclasses.Field, name: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or say which flag is wrong."""
    type_str = str(f.type)
    if value is None and "None" in type_str:
        return None
    try:
        if type_str.startswith("list"):
            return [str(v) for v in value] if isinstance(value, list) else [str(value)]
        if type_str.startswith("bool"):
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if type_str.startswith("int"):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise TypeError
            return int(float(value))
        if type_str.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a valid {type_str}; fix --{name}.") from None


def recipe_json(recipe: Recipe) -> str:
    return json.dumps(recipe.to_dict(), ensure_ascii=False, indent=2)
