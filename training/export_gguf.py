"""`xiaophi-train export gguf`: a checkpoint as one GGUF file for llama.cpp and ollama.

Written with the `gguf` package (llama.cpp's own writer and tensor-name map), for each
architecture a recipe can choose:

- `phi` → llama.cpp's `phi2`: its loader wants `output.weight` and `output.bias`, so a tied
  head is written out as a copy of the embeddings, beside the head's bias.
- `llama` → `llama`: llama.cpp rotates pairs of adjacent dimensions where transformers rotates
  the two halves of a head, so the rows of the q and k projections are reordered to match (as
  llama.cpp's converter does). A tied head is left out: the loader reuses the embeddings.
- `qwen2` → `qwen2` (halves, as transformers), q/k/v biases included.

The tokenizer: xiaophi's byte-level BPE splits text with Qwen2's pattern first (training/
tokenizer.py), so `tokenizer.ggml.pre = "qwen2"` makes llama.cpp split it the same way; a
tokenizer whose pre-tokenizer is anything else is refused with the reason. The chat template
goes in `tokenizer.chat_template` (without transformers' own `{% generation %}` tag), `<|im_end|>` is the end-of-generation token (llama.cpp does
not read generation_config.json's list), and the checkpoint's repetition penalty goes in
`general.sampling.penalty_repeat`.

Types: `f32`, `f16`, `bf16` and `q8_0` are written here (1-D tensors stay f32, as llama.cpp's
converter keeps them; a matrix whose rows do not split into q8_0's 32-value blocks stays f16).
K-quants (`--quantize q4_k_m`, …) come from llama.cpp's own quantizer through llama-cpp-python.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.chat_format import IM_END
from training.tokenizer import SPLIT_PATTERN

#: the recipe's `model.arch` → llama.cpp's architecture name
GGUF_ARCH = {"phi": "phi2", "llama": "llama", "qwen2": "qwen2"}
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
#: llama.cpp's quantizer types offered by --quantize (llama_ftype values)
QUANTIZE_TYPES = {
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 8,
    "q5_1": 9,
    "q2_k": 10,
    "q3_k_m": 12,
    "q4_k_s": 14,
    "q4_k_m": 15,
    "q5_k_s": 16,
    "q5_k_m": 17,
    "q6_k": 18,
}


class ExportError(ValueError):
    """The checkpoint cannot be exported as asked; the message says why and what to do."""


@dataclass
class Exported:
    path: Path
    outtype: str
    tensors: int
    bytes: int


def checkpoint_of(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder's final chat model (`<run>/dpo`, else `<run>/sft`)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for stage in ("dpo", "sft"):
        if (path / stage / "config.json").is_file():
            return path / stage
    raise ExportError(
        f"{path} is neither a checkpoint (no config.json) nor a run folder with a finished "
        "dpo or sft stage"
    )


def check_pre_tokenizer(tokenizer_json: dict) -> None:
    """Refuse a tokenizer that llama.cpp's `qwen2` pre-tokenizer would not split the same way."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    split = steps[0] if kinds == ["Split", "ByteLevel"] else None
    model = tokenizer_json.get("model", {})
    problems = []
    if model.get("type") != "BPE":
        problems.append(f"its model is {model.get('type')!r}, not byte-level BPE")
    if split is None:
        problems.append(f"its pre-tokenizer is {kinds}, not [Split, ByteLevel]")
    else:
        if split.get("pattern", {}).get("Regex") != SPLIT_PATTERN:
            problems.append("its split pattern is not Qwen2's")
        if split.get("behavior") != "Isolated" or split.get("invert"):
            problems.append("its split does not keep the pieces (behavior Isolated)")
        if steps[1].get("use_regex") or steps[1].get("add_prefix_space"):
            problems.append("its byte-level step splits or adds a space again")
    if tokenizer_json.get("normalizer"):
        problems.append("it normalizes text first")
    if problems:
        raise ExportError(
            "llama.cpp would not tokenize like this tokenizer: "
            + "; ".join(problems)
            + ". The GGUF export supports xiaophi's own tokenizer (training/tokenizer.py), "
            "which llama.cpp reads as its `qwen2` pre-tokenizer."
        )


def portable_template(template: str) -> str:
    """The chat template without transformers' `{% generation %}` block (it only marks the
    assistant's tokens for training masks; Jinja runtimes outside transformers may not know the
    tag): the same text, as an `if true` block with the same whitespace control."""
    template = re.sub(r"\{%(-?)\s*generation\s*(-?)%\}", r"{%\1 if true \2%}", template)
    return re.sub(r"\{%(-?)\s*endgeneration\s*(-?)%\}", r"{%\1 endif \2%}", template)


def _llama_rotary_order(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k projection from transformers' rotate-halves order to llama.cpp's
    adjacent-pairs order, head by head."""
    rows, cols = weight.shape
    return weight.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _encode(data: np.ndarray, outtype: str):
    """The tensor's data and its GGML type for `outtype` (1-D and norms stay f32)."""
    import gguf

    q = gguf.GGMLQuantizationType
    data = data.astype(np.float32)
    if data.ndim == 1 or outtype == "f32":
        return data, q.F32
    if outtype == "f16":
        return data.astype(np.float16), q.F16
    if outtype == "bf16":
        return gguf.quants.quantize(data, q.BF16), q.BF16
    if data.shape[-1] % gguf.GGML_QUANT_SIZES[q.Q8_0][0]:
        return data.astype(np.float16), q.F16  # rows that do not split into blocks
    return gguf.quants.quantize(data, q.Q8_0), q.Q8_0


def _file_type(outtype: str) -> int:
    import gguf

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[outtype]


def _token_list(tokenizer_json: dict, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id's token text (byte-level, as tokenizer.json stores it) and type; ids the model
    has beyond the tokenizer's (the vocabulary is padded) are unused placeholders."""
    import gguf

    by_id: dict[int, str] = {i: t for t, i in tokenizer_json["model"]["vocab"].items()}
    special = {a["id"] for a in tokenizer_json.get("added_tokens", []) if a.get("special")}
    for added in tokenizer_json.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    return tokens, types


def _merges(tokenizer_json: dict) -> list[str]:
    merges = tokenizer_json["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def export_gguf(
    checkpoint: str | Path,
    out: str | Path | None = None,
    outtype: str = "f16",
    force: bool = False,
) -> Exported:
    """Write `checkpoint` (or a run's final chat model) as a GGUF file; see the module doc."""
    import gguf
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    folder = checkpoint_of(checkpoint)
    if outtype not in OUTTYPES:
        raise ExportError(f"--outtype must be one of {', '.join(OUTTYPES)}, not {outtype!r}")
    out = Path(out) if out else folder / f"{folder.parent.name}-{folder.name}-{outtype}.gguf"
    if out.exists() and not force:
        raise ExportError(f"{out} exists: pass --force to overwrite it, or another --out")
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ExportError(
            f"{folder} has no tokenizer.json: a GGUF carries its tokenizer (export a checkpoint "
            "saved by xiaophi-train, or copy its run's tokenizer files beside the weights)"
        )
    config = AutoConfig.from_pretrained(folder)
    arch = {"PhiConfig": "phi", "LlamaConfig": "llama", "Qwen2Config": "qwen2"}.get(
        type(config).__name__
    )
    if arch is None:
        raise ExportError(
            f"{folder} is a {config.model_type!r} model; the GGUF export supports the "
            f"architectures a recipe can choose: {', '.join(GGUF_ARCH)}"
        )
    tokenizer_json = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    check_pre_tokenizer(tokenizer_json)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    template_file = folder / "chat_template.jinja"
    chat_template = (
        template_file.read_text(encoding="utf-8")
        if template_file.is_file()
        else tokenizer_config.get("chat_template")
    )
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    try:
        generation = GenerationConfig.from_pretrained(folder)
    except OSError:
        generation = None
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}

    arch_name = GGUF_ARCH[arch]
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = config.hidden_size // n_head
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(partial, arch_name)
    writer.add_name(f"xiaophi {folder.parent.name}/{folder.name}")
    writer.add_file_type(_file_type(outtype))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 1e4))))
    if arch == "phi":
        rotary = int(head_dim * rope.get("partial_rotary_factor", 0.5))
        writer.add_rope_dimension_count(rotary)
        writer.add_layer_norm_eps(config.layer_norm_eps)
    else:
        writer.add_rope_dimension_count(head_dim)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)

    tokens, types = _token_list(tokenizer_json, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(tokenizer_json))
    ids = {t: i for i, t in enumerate(tokens)}
    if IM_END not in ids:
        raise ExportError(
            f"the tokenizer of {folder} has no {IM_END} token: not a xiaophi chat model"
        )
    writer.add_eos_token_id(ids[IM_END])
    writer.add_eot_token_id(ids[IM_END])
    for key, add in (
        ("bos_token", writer.add_bos_token_id),
        ("pad_token", writer.add_pad_token_id),
        ("unk_token", writer.add_unk_token_id),
    ):
        name = tokenizer_config.get(key)
        if isinstance(name, str) and name in ids:
            add(ids[name])
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(portable_template(chat_template))
    if generation is not None and generation.repetition_penalty not in (None, 1.0):
        writer.add_sampling_penalty_repeat(float(generation.repetition_penalty))

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch_name.upper()], config.num_hidden_layers)
    tensors = []
    for hf_name, data in state.items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings and arch != "phi":
            continue  # llama.cpp's llama/qwen2 reuse token_embd for a missing output
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"no GGUF name for the tensor {hf_name} of a {arch} model")
        if arch == "llama" and re.search(r"self_attn\.(q|k)_proj\.weight$", hf_name):
            data = _llama_rotary_order(data, n_head if ".q_proj." in hf_name else n_kv)
        tensors.append((name, data))
    if arch == "phi" and not any(n == "output.weight" for n, _ in tensors):
        tensors.append(("output.weight", state["model.embed_tokens.weight"]))
    for name, data in tensors:
        encoded, qtype = _encode(data, outtype)
        writer.add_tensor(name, encoded, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out)
    return Exported(out, outtype, len(tensors), out.stat().st_size)


def quantize_gguf(source: Path, kind: str, out: Path | None = None, force: bool = False) -> Path:
    """`source` (an f32/f16/bf16 GGUF) through llama.cpp's quantizer (llama-cpp-python)."""
    if kind not in QUANTIZE_TYPES:
        raise ExportError(f"--quantize must be one of {', '.join(QUANTIZE_TYPES)}, not {kind!r}")
    out = out or source.with_name(
        re.sub(r"-(f32|f16|bf16)\.gguf$", "", source.name) + f"-{kind}.gguf"
    )
    if out.exists() and not force:
        raise ExportError(f"{out} exists: pass --force to overwrite it, or another --out")
    try:
        import llama_cpp
    except ImportError as exc:
        raise ExportError(
            f"--quantize {kind} runs llama.cpp's quantizer, from llama-cpp-python: "
            "`pip install 'xiaophi[quantize]'` (it builds llama.cpp, a few minutes), or quantize "
            f"{source} with llama.cpp's own `llama-quantize`"
        ) from exc
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTIZE_TYPES[kind]
    partial = out.with_name(out.name + ".partial")
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(partial).encode(), llama_cpp.byref(params)
    )
    if status != 0:
        partial.unlink(missing_ok=True)
        raise ExportError(f"llama.cpp could not quantize {source} to {kind} (status {status})")
    partial.replace(out)
    return out


#: ollama's template (Go syntax) for the turns xiaophi's chat template renders without tools
#: or documents: the same text, token for token. (Tools and documents are in the GGUF's own
#: Jinja template, which llama.cpp's server renders with --jinja.)
OLLAMA_TEMPLATE = (
    "{{- range .Messages }}"
    '{{- if eq .Role "tool" }}<|im_start|>user\n<tool_response>\n{{ .Content }}\n'
    "</tool_response><|im_end|>\n"
    "{{ else }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}{{ end }}<|im_start|>assistant\n"
)


def modelfile_text(gguf_file: Path, repetition_penalty: float | None, system: str | None) -> str:
    """An ollama Modelfile for `gguf_file` (which it names relative to itself)."""
    lines = [
        f"FROM ./{gguf_file.name}",
        f'TEMPLATE """{OLLAMA_TEMPLATE}"""',
        f'PARAMETER stop "{IM_END}"',
        'PARAMETER stop "<|endoftext|>"',
    ]
    if repetition_penalty:
        lines.append(f"PARAMETER repeat_penalty {repetition_penalty:g}")
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_file: Path, checkpoint: Path, system: str | None = None) -> Path:
    from transformers import GenerationConfig

    try:
        penalty = GenerationConfig.from_pretrained(checkpoint).repetition_penalty
    except OSError:
        penalty = None
    path = gguf_file.with_name(gguf_file.stem + ".Modelfile")
    path.write_text(modelfile_text(gguf_file, penalty, system), encoding="utf-8")
    return path
