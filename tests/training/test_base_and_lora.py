"""Starting from a model the user has (`base:`) and LoRA stages: the base (a tiny pretrain of a
test run, copied out as a plain folder) replaces the tokenizer and pretrain stages; a LoRA SFT
trains only its adapter, and the merged checkpoint answers as the adapter model does; DPO with
LoRA keeps one model (the adapter switched off is its reference); a changed base is refused;
QLoRA off CUDA is refused before any work; a base without a chat template gets xiaophi's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.training.conftest import IDIOMS, tiny_overrides
from training.config import load_recipe
from training.pipeline import run_pipeline, run_single_stage
from training.stage_dirs import check_run_dir, read_stage_report
from training.stages import wanted_stages

pytestmark = pytest.mark.slow

LORA = {"r": 4, "alpha": 8.0, "dropout": 0.0}


@pytest.fixture(scope="module")
def base(tiny_data, tmp_path_factory) -> Path:
    """The pretrain stage of a tiny run, copied out as a model folder (its stage report, which no
    base needs, comes along for the continued-pretraining test)."""
    run = tmp_path_factory.mktemp("base_run")
    recipe = load_recipe("tiny", tiny_overrides(tiny_data))
    run_single_stage(recipe, run, "tokenizer")
    run_single_stage(recipe, run, "pretrain")
    folder = tmp_path_factory.mktemp("base") / "model"
    shutil.copytree(run / "pretrain", folder)
    return folder


def base_recipe(tiny_data, base: Path, **extra):
    overrides = tiny_overrides(tiny_data, **{"pretrain.enabled": False, **extra})
    overrides["base"] = str(base)
    return load_recipe("tiny", overrides)


@pytest.fixture(scope="module")
def lora_sft(tiny_data, base, tmp_path_factory) -> tuple[Path, dict]:
    """A LoRA SFT stage from the base; the report gets the adapter as it was when training
    started (`initial_adapter`)."""
    import training.sft

    run = tmp_path_factory.mktemp("lora_run")
    recipe = base_recipe(tiny_data, base, **{"sft.lora": LORA, "sft.max_steps": 16})
    initial = {}

    def snapshot_then_train(trainer, *args, **kwargs):
        for name, param in trainer.model.named_parameters():
            if "lora_" in name:
                initial[name] = param.detach().clone()
        return train_resumably(trainer, *args, **kwargs)

    train_resumably = training.sft.train_resumably
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.sft, "train_resumably", snapshot_then_train)
        report = run_single_stage(recipe, run, "sft")
    return run, {**report, "initial_adapter": initial}


def test_a_base_replaces_the_tokenizer_and_pretrain_stages(tiny_data, base):
    recipe = base_recipe(tiny_data, base)
    assert [s.name for s in wanted_stages(recipe)][:3] == ["sft", "dpo-data", "dpo"]
    continued = base_recipe(tiny_data, base, **{"pretrain.enabled": True})
    assert [s.name for s in wanted_stages(continued)][:2] == ["pretrain", "sft"]
    fingerprint = recipe.fingerprint()["base"]
    assert fingerprint["path"] == str(base) and len(fingerprint["digest"]) == 64


def test_what_needs_a_base_says_so(tiny_data):
    with pytest.raises(ValueError, match="--base DIR"):
        load_recipe("tiny", tiny_overrides(tiny_data, **{"pretrain.enabled": False}))
    with pytest.raises(ValueError, match="--pretrain.lora"):
        load_recipe("tiny", tiny_overrides(tiny_data, **{"pretrain.lora": LORA}))
    missing = load_recipe("tiny", {"base": "/nonexistent/model", "pretrain.enabled": False})
    with pytest.raises(FileNotFoundError, match="not a folder"):
        missing.fingerprint()


def test_lora_sft_trains_only_the_adapter_and_merges_exactly(lora_sft, base):
    run, report = lora_sft
    sft = run / "sft"
    assert report["lora"] and report["start"] == str(base)
    assert 0 < report["trainable_parameters"] < report["all_parameters"] / 5
    assert report["adapter_bytes"] > 0
    assert report["eval_loss"] < report["eval_loss_before"]  # loss fell on held-out chats

    adapter = load_file(sft / "adapter" / "adapter_model.safetensors")
    config = json.loads((sft / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]
    )
    # every adapter weight moved from where training started (B from zero, A from its draw)
    initial = {k.replace(".default", ""): v for k, v in report["initial_adapter"].items()}
    assert len(initial) == len(adapter) == 2 * 6 * 2  # A and B, 6 projections, 2 layers
    for name, weight in adapter.items():
        start = initial[name]
        assert not torch.equal(weight, start), name
        assert (weight != start).float().mean() > 0.9, name  # nearly every entry, not a few

    before = load_file(base / "model.safetensors")
    after = load_file(sft / "model.safetensors")
    assert before.keys() == after.keys()
    scale = LORA["alpha"] / LORA["r"]
    for name, weight in before.items():
        module = name.removesuffix(".weight")
        a_key = next((k for k in adapter if k.endswith(f"{module}.lora_A.weight")), None)
        if a_key is None:  # not wrapped: bit-identical to the base
            assert torch.equal(after[name], weight), name
        else:  # the base plus exactly the adapter's update
            delta = scale * adapter[a_key.replace("lora_A", "lora_B")] @ adapter[a_key]
            assert torch.allclose(after[name], weight + delta, atol=1e-6), name
            assert not torch.equal(after[name], weight), name


def test_the_merged_model_answers_as_the_adapter_model(lora_sft, base):
    from peft import PeftModel

    run, _ = lora_sft
    tokenizer = AutoTokenizer.from_pretrained(run / "sft")
    merged = AutoModelForCausalLM.from_pretrained(run / "sft").eval()
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base), run / "sft" / "adapter"
    ).eval()
    for question in ["“画蛇添足”是什么意思？", "“掩耳盗铃”是什么意思？"]:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=False
        )
        kwargs = dict(max_new_tokens=16, do_sample=False, repetition_penalty=1.0)
        a = merged.generate(torch.tensor([ids]), **kwargs)
        b = adapted.generate(input_ids=torch.tensor([ids]), **kwargs)
        assert a.tolist() == b.tolist()


def test_a_changed_base_is_refused_on_resume(tiny_data, base, lora_sft, tmp_path):
    run, _ = lora_sft
    overrides = {"sft.lora": LORA, "sft.max_steps": 16}
    assert check_run_dir(run, base_recipe(tiny_data, base, **overrides))  # the same base
    moved = tmp_path / "base"
    shutil.copytree(base, moved)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    stored = json.loads((copy / "recipe.json").read_text())
    stored["fingerprint"]["base"]["path"] = str(moved)  # the run as if begun from the copy
    (copy / "recipe.json").write_text(json.dumps(stored))
    assert check_run_dir(copy, base_recipe(tiny_data, moved, **overrides))
    weights = load_file(moved / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, moved / "model.safetensors")
    with pytest.raises(ValueError, match=r"base\.digest"):
        check_run_dir(copy, base_recipe(tiny_data, moved, **overrides))


def test_qlora_off_cuda_is_refused_before_any_work(tiny_data, base, tmp_path):
    recipe = base_recipe(tiny_data, base, **{"sft.lora": {**LORA, "qlora": True}})
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        run_single_stage(recipe, tmp_path / "run", "sft")
    assert not (tmp_path / "run" / "sft").exists()


def test_dpo_with_lora_uses_the_adapter_switched_off_as_reference(
    tiny_data, base, tmp_path, monkeypatch
):
    import training.dpo

    seen = {}

    class Watched(training.dpo.DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["ref_model"] = self.ref_model
            seen["peft"] = type(self.model).__name__

    monkeypatch.setattr(training.dpo, "DPOTrainer", Watched)
    heldout = tmp_path / "heldout.jsonl"
    rows = [
        {"kind": "idiom", "subject": k, "answer": v, "split": "test"} for k, v in IDIOMS.items()
    ]
    heldout.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    evaluation = {
        "eval.enabled": True,
        "eval.heldout": str(heldout),
        "eval.tasks": ["xiaophi_heldout_bpc"],
        "eval.bpc_max_chars": 2000,
    }
    recipe = base_recipe(tiny_data, base, **{"sft.lora": LORA, "dpo.lora": LORA, **evaluation})
    run = tmp_path / "run"
    summary = run_pipeline(recipe, run, log=lambda *a: None)
    report = read_stage_report(run, "dpo")
    assert seen == {"ref_model": None, "peft": "PeftModelForCausalLM"}  # one model in memory
    assert report["reference_model"] == "the adapter switched off"
    assert (run / "dpo" / "adapter" / "adapter_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(run / "dpo")  # a plain checkpoint
    assert not any("lora" in name for name, _ in model.named_parameters())
    # the eval stage scores the base first, beside fresh weights of its shape and the result
    bpc = {
        name: column["xiaophi_heldout_bpc"]["bits_per_char"]
        for name, column in summary["eval"]["results"].items()
    }
    assert list(bpc) == ["base", "untrained", "dpo"]
    assert bpc["base"] < bpc["untrained"] and bpc["dpo"] < bpc["untrained"]


def test_a_base_without_a_chat_template_gets_xiaophis(tiny_data, base, tmp_path):
    """The base's tokenizer made template-less and without xiaophi's chat markers: SFT adds
    them as special tokens, grows the embeddings (new rows the mean of the old) and trains."""
    from tokenizers import Tokenizer

    bare = tmp_path / "bare"
    shutil.copytree(base, bare)
    spec = json.loads((bare / "tokenizer.json").read_text())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if "im_" not in t["content"]]
    for marker in ("<|im_start|>", "<|im_end|>"):
        spec["model"]["vocab"].pop(marker, None)
    Tokenizer.from_str(json.dumps(spec))  # still a valid tokenizer
    (bare / "tokenizer.json").write_text(json.dumps(spec))
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    config.pop("extra_special_tokens", None)
    config.pop("additional_special_tokens", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    assert AutoTokenizer.from_pretrained(bare).chat_template is None

    recipe = base_recipe(tiny_data, bare, **{"sft.lora": LORA})
    report = run_single_stage(recipe, tmp_path / "run", "sft")
    assert report["chat_template"] == "xiaophi's (the base had none)"
    assert report["tokens_added"] >= 2
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "sft")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False)
    assert text.startswith("<|im_start|>user")
    ids = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert all(i >= len(AutoTokenizer.from_pretrained(bare)) for i in ids)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "sft")
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)


def test_new_chat_tokens_start_as_the_mean_of_the_old_rows(base):
    """What `with_chat_template` gives a base without a template, before any training."""
    from training.base_model import with_chat_template

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = None
    model = AutoModelForCausalLM.from_pretrained(base)
    old = model.get_input_embeddings().weight.detach().clone()
    added = with_chat_template(model, tokenizer)
    tokenizer.add_tokens(["<|xiaophi_test_a|>", "<|xiaophi_test_b|>"], special_tokens=True)
    from training.base_model import grow_embeddings

    grown = grow_embeddings(model, len(tokenizer) + 64)  # rows beyond the padded vocabulary
    assert added["chat_template"] == "xiaophi's (the base had none)"
    assert grown == ["embed_tokens", "lm_head"]
    weight = model.get_input_embeddings().weight
    assert torch.equal(weight[: len(old)], old)
    assert torch.allclose(weight[len(old) :], old.mean(0).expand(weight.shape[0] - len(old), -1))


def test_the_eval_stage_scores_the_base_first(tiny_data, base):
    from training.eval.stage import models_to_score

    recipe = base_recipe(tiny_data, base)
    assert models_to_score(recipe) == ["base", "untrained", "dpo"]
    scratch = load_recipe("tiny", tiny_overrides(tiny_data))
    assert models_to_score(scratch) == scratch.eval.models


def test_sequences_are_checked_against_the_base_not_the_model_section(tiny_data, base, tmp_path):
    """The recipe's `model` section describes a model built from nothing; with a base its own
    positions (128 here) bound the stages' sequences, before any work starts."""
    fits = base_recipe(tiny_data, base, **{"sft.seq_len": 128, "model.max_position_embeddings": 64})
    assert fits.sft.seq_len == 128
    too_long = base_recipe(tiny_data, base, **{"sft.seq_len": 256})
    with pytest.raises(ValueError, match="exceeds the base's max_position_embeddings=128"):
        run_single_stage(too_long, tmp_path / "run", "sft")
    assert not (tmp_path / "run" / "sft").exists()


def test_a_template_sft_cannot_mask_is_refused_with_the_fix(tiny_data, base, tmp_path):
    """A base template without {% generation %} marks that trl has no training version of:
    SFT cannot tell the assistant's tokens, so it stops before training and says what to add."""
    plain = tmp_path / "plain"
    shutil.copytree(base, plain)
    (plain / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    assert "{% generation" not in AutoTokenizer.from_pretrained(plain).chat_template
    recipe = base_recipe(tiny_data, plain, **{"sft.lora": LORA})
    with pytest.raises(ValueError, match=r"no \{% generation %\} marks"):
        run_single_stage(recipe, tmp_path / "run", "sft")
    assert not (tmp_path / "run" / "sft").exists()


def foreign_base(folder: Path, arch: str) -> tuple[Path, str]:
    """A tiny `arch` model whose tokenizer carries another family's chat template (the very text
    trl knows: Qwen2.5's for qwen2, Llama 3's for llama) and its markers; and the text the loss
    mask must cover around an assistant's answer in it."""
    from trl.chat_template_utils import llama3_chat_template, qwen2_5_chat_template

    from tests.conftest import TINY_TEXTS
    from training.config import ModelConfig
    from training.model_factory import build_model
    from training.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(TINY_TEXTS, vocab_size=400, min_frequency=1, model_max_length=256)
    if arch == "qwen2":
        tokenizer.chat_template = qwen2_5_chat_template
        span = "\n{answer}<|im_end|>\n"  # trl's training version marks from the role's newline on
    else:
        markers = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        tokenizer.add_tokens(markers, special_tokens=True)
        tokenizer.chat_template = llama3_chat_template
        span = "{answer}<|eot_id|>"
    config = ModelConfig(
        arch=arch,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    build_model(config, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, span


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_a_base_with_its_own_template_masks_exactly_the_answers_and_trains(
    tiny_data, tmp_path, arch
):
    from training.sft import build_trainer

    folder, span = foreign_base(tmp_path / arch, arch)
    overrides = {"sft.lora": LORA, "sft.seq_len": 256, "sft.max_steps": 16}
    recipe = base_recipe(tiny_data, folder, **overrides)
    trainer, trained_on = build_trainer(recipe, tmp_path / "probe_run")
    assert trained_on["assistant_mask"] == "trl's training version of the base's template"
    tokenizer = trainer.processing_class
    for row in trainer.train_dataset.select(range(8)):
        answer = next(m["content"] for m in row["messages"] if m["role"] == "assistant")
        masked = [
            t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100
        ]
        assert tokenizer.decode(masked) == span.format(answer=answer)
    del trainer

    report = run_single_stage(recipe, tmp_path / "run", "sft")
    assert report["chat_template"] == "the base's own" and report["lora"]
    assert report["eval_loss"] < report["eval_loss_before"]
    saved = AutoTokenizer.from_pretrained(tmp_path / "run" / "sft")
    assert saved.chat_template == tokenizer.chat_template  # served with the base's own template


def test_pretraining_continues_from_the_base_with_a_lora_adapter(tiny_data, base, tmp_path):
    """Continued pretraining on the same corpus: the stage starts where the base ended (its
    held-out loss before training is the base's own final one, far below fresh weights') and
    trains only its adapter."""
    recipe = base_recipe(
        tiny_data, base, **{"pretrain.enabled": True, "pretrain.lora": {**LORA, "r": 8}}
    )
    assert [s.name for s in wanted_stages(recipe)][0] == "pretrain"
    report = run_single_stage(recipe, tmp_path / "run", "pretrain")
    base_report = json.loads((base / "stage_report.json").read_text())
    assert report["base"] == str(base) and report["lora"]
    assert report["eval_loss_untrained"] == pytest.approx(base_report["eval_loss"], abs=1e-3)
    assert base_report["eval_loss_untrained"] - report["eval_loss_untrained"] > 1.0
    assert report["eval_loss"] < report["eval_loss_untrained"]
    assert (tmp_path / "run" / "pretrain" / "adapter" / "adapter_config.json").is_file()
