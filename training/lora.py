"""LoRA and QLoRA for a Trainer stage (peft): the recipe's `<stage>.lora` as a peft config, the
4-bit loading QLoRA needs, and a stage folder that stays a plain checkpoint — the model with the
adapter merged in, loadable by `AutoModelForCausalLM` alone (the server, vLLM and the GGUF export
take it unchanged), and the adapter itself in `adapter/` (loadable with `PeftModel`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from training.config import LoraConfig

ADAPTER_DIR = "adapter"

#: Layers the adapter wraps when the recipe names none: every attention and feed-forward
#: projection of the architectures xiaophi builds (the LM head and embeddings stay frozen);
#: any other architecture gets peft's "all-linear" (every linear layer but the output head).
DEFAULT_TARGETS: dict[str, list[str]] = {
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def check_qlora(cfg: LoraConfig | None, where: str) -> None:
    """QLoRA only where bitsandbytes' 4-bit training path runs: CUDA."""
    if cfg is None or not cfg.qlora:
        return
    if not torch.cuda.is_available():
        raise ValueError(
            f"{where}.lora.qlora needs a CUDA GPU: QLoRA keeps the frozen base in 4 bit with "
            "bitsandbytes' NF4 CUDA kernels, and on a CPU that saves no time and little memory "
            f"for a model small enough to train there. Set --{where}.lora '{{qlora: false}}' "
            "(plain LoRA on the full-precision base) on this machine."
        )
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:  # transformers imports it to load
        raise ValueError(f"{where}.lora.qlora needs bitsandbytes: pip install 'xiaophi[qlora]'.")


def quantized_loading(cfg: LoraConfig | None) -> dict:
    """`from_pretrained` keywords for a QLoRA base (4-bit NF4, bf16 compute); none for LoRA."""
    if cfg is None or not cfg.qlora:
        return {}
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        ),
        "dtype": torch.bfloat16,
    }


def peft_config(cfg: LoraConfig, model, resized: list[str] | None = None):
    """The peft LoraConfig for `model`; embeddings the stage resized train in full
    (`modules_to_save`) unless the recipe names its own."""
    import peft

    targets = list(cfg.target_modules) or DEFAULT_TARGETS.get(model.config.model_type, "all-linear")
    to_save = list(cfg.modules_to_save) or list(resized or []) or None
    return peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        modules_to_save=to_save,
        task_type="CAUSAL_LM",
    )


def wrap(model, cfg: LoraConfig):
    """`model` with a fresh adapter (for stages whose Trainer does not take a peft config)."""
    import peft

    if cfg.qlora:
        model = peft.prepare_model_for_kbit_training(model)
    return peft.get_peft_model(model, peft_config(cfg, model))


def save_merged(trainer, tokenizer, work: Path, start: Path, cfg: LoraConfig) -> dict:
    """The adapter into `work/adapter`, the merged model and tokenizer into `work`; returns the
    adapter's figures for the report. With QLoRA the adapter is merged into the base loaded
    again in bf16 (a 4-bit base cannot take it exactly)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    work = Path(work)
    model = trainer.accelerator.unwrap_model(trainer.model)
    trainer.accelerator.wait_for_everyone()
    figures = adapter_figures(model)
    if trainer.is_world_process_zero():
        model.save_pretrained(str(work / ADAPTER_DIR))
        tokenizer.save_pretrained(str(work / ADAPTER_DIR))
        if cfg.qlora:
            from training.base_model import grow_embeddings

            base = AutoModelForCausalLM.from_pretrained(str(start), dtype=torch.bfloat16)
            grow_embeddings(base, len(tokenizer))  # rows the stage added (never shrinks)
            model = PeftModel.from_pretrained(base, str(work / ADAPTER_DIR))
        merged = model.merge_and_unload()
        merged.save_pretrained(str(work))
        tokenizer.save_pretrained(str(work))
    trainer.accelerator.wait_for_everyone()
    figures["adapter_bytes"] = sum(
        f.stat().st_size for f in (work / ADAPTER_DIR).glob("adapter_model.*")
    )
    return figures


def adapter_figures(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"lora": True, "trainable_parameters": trainable, "all_parameters": total}
