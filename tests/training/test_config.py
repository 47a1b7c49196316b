"""Recipes: every shipped recipe parses; flags override fields; bad values name the flag."""

import json
import re
from pathlib import Path

import pytest

from training.cli import build_parser, recipe_from_args
from training.config import RECIPES_DIR, SECTION_MODELS, Recipe, load_recipe

FIXTURES = Path(__file__).with_name("fixtures")


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_parses_and_validates(path):
    recipe = load_recipe(str(path))
    assert recipe.name == path.stem
    for stage in (recipe.pretrain, recipe.sft, recipe.dpo):
        assert stage.seq_len <= recipe.model.max_position_embeddings


def test_seed_recipe_is_the_seed_articles_model():
    m = load_recipe("seed").model
    assert (m.arch, m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size) == (
        "phi",
        960,
        24,
        16,
        4096,
    )
    assert load_recipe("seed").pretrain.seq_len == 512


def test_cli_flags_override_recipe_fields():
    args = build_parser().parse_args(
        [
            "pretrain",
            "--out",
            "x",
            "--pretrain.max_steps",
            "7",
            "--pretrain.lr",
            "1e-4",
            "--model.arch",
            "llama",
            "--data.pretrain",
            "a.jsonl",
            "--embedder.enabled",
            "false",
        ]
    )
    recipe = recipe_from_args(args)
    assert recipe.pretrain.max_steps == 7 and recipe.pretrain.lr == pytest.approx(1e-4)
    assert recipe.model.arch == "llama" and recipe.data.pretrain == ["a.jsonl"]
    assert recipe.embedder.enabled is False
    assert (
        recipe.sft.max_steps == load_recipe("tiny").sft.max_steps
    )  # untouched fields keep the YAML


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"pretrain.seq_len": 4096}, "--pretrain.seq_len"),
        ({"model.arch": "gpt5"}, "--model.arch"),
        ({"tokenizer.vocab_size": 100}, "--tokenizer.vocab_size"),
        ({"model.num_heads": 5}, "--model.hidden_size or --model.num_heads"),
        ({"sft.max_steps": 0}, "--sft.max_steps"),
        ({"embedder.arch": "lstm"}, "--embedder.arch"),
        ({"embedder.tokenizer": "word"}, "--embedder.tokenizer"),
        ({"pretrain.max_steps": True}, "--pretrain.max_steps takes a value, not True"),
        ({"embedder.lr": False}, "--embedder.lr takes a value, not False"),
        ({"eval.models": ["untrained", "gpt"]}, "eval.models has 'gpt'; set --eval.models"),
        ({"eval.split": "train"}, "--eval.split to 'dev' or 'test'"),
        ({"pretrain.schedule": "linear"}, "--pretrain.schedule to 'cosine' or 'wsd'"),
        ({"dpo.decay_fraction": 1.5}, "--dpo.decay_fraction must be at most 1"),
        ({"decoding.repetition_penalties": ["-1"]}, "--decoding.repetition_penalties"),
        ({"decoding.sampling": ["0.7:2"]}, "--decoding.sampling"),
        ({"model.num_kv_heads": 3}, "--model.num_kv_heads"),
        ({"model.attn_implementation": "flash"}, "--model.attn_implementation"),
        ({"embedder.enabled": "maybe"}, "--embedder.enabled"),
    ],
)
def test_bad_values_name_the_flag_to_change(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_recipe("tiny", overrides)


def test_unknown_fields_and_recipes_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain:\n  max_stepz: 3\n")
    with pytest.raises(ValueError, match="max_stepz"):
        load_recipe(str(bad))
    with pytest.raises(FileNotFoundError, match="tiny"):
        load_recipe("no-such-recipe")


def test_values_are_converted_to_the_field_type_or_refused():
    recipe = load_recipe(
        "tiny", {"pretrain.lr": "1e-4", "pretrain.max_steps": "12", "embedder.enabled": "no"}
    )
    assert recipe.pretrain.lr == pytest.approx(1e-4) and recipe.pretrain.max_steps == 12
    assert recipe.embedder.enabled is False
    with pytest.raises(ValueError, match="--pretrain.max_steps"):
        load_recipe("tiny", {"pretrain.max_steps": "many"})


@pytest.mark.parametrize(
    "command",
    [[], ["data", "demo"], ["pipeline"], ["embedder"], ["pretrain"], ["sft"], ["dpo"], ["chat"]],
)
def test_every_help_page_renders(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: " in capsys.readouterr().out


def test_every_field_is_a_flag_with_help_from_its_section_model():
    from training.config import SECTION_MODELS, field_flags

    flags = dict(field_flags())
    for section, model in SECTION_MODELS.items():
        for name in model.model_fields:
            assert flags[f"{section}.{name}"].description, f"{section}.{name} has no help"
    page = build_parser().format_help()
    assert "pipeline" in page and "tokenizer" in page


def test_pipeline_help_lists_every_flag_with_its_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pipeline", "--help"])
    page = " ".join(capsys.readouterr().out.split())
    assert "--pretrain.max_steps V Optimizer steps." in page
    assert "--model.arch V Architecture: phi, llama or qwen2." in page
    assert "(sha1 % 10 == 0)" in page  # a % in a help text is shown, not formatted


def test_model_arch_choices_are_the_ones_the_model_factory_builds():
    from typing import get_args

    from training.config import ModelArch
    from training.model_factory import _CLASSES

    assert set(get_args(ModelArch)) == set(_CLASSES)


def test_flag_values_keep_their_yaml_meaning():
    args = build_parser().parse_args(
        [
            "pipeline",
            "--out",
            "x",
            "--data.dpo",
            "[a.jsonl, b.jsonl]",
            "--tokenizer.max_chars",
            "null",
            "--decoding.repetition_penalties",
            "[1.0, 1.25]",
            "--eval.models",
            "sft",
            "--data.probe",
            "123",
        ]
    )
    recipe = recipe_from_args(args)
    assert recipe.data.dpo == ["a.jsonl", "b.jsonl"] and recipe.tokenizer.max_chars is None
    assert recipe.decoding.repetition_penalties == ["1.0", "1.25"]
    assert recipe.eval.models == ["sft"] and recipe.data.probe == "123"


def test_unknown_sections_are_refused_by_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrian:\n  max_steps: 3\n")
    with pytest.raises(ValueError, match="unknown section.*'pretrian'"):
        load_recipe(str(bad))


def test_assignments_are_checked_and_check_sees_across_sections():
    recipe = load_recipe("tiny")
    with pytest.raises(ValueError, match="'phi', 'llama' or 'qwen2'"):
        recipe.model.arch = "gpt5"
    recipe.pretrain.seq_len = 4096  # fits its own section; only the model's length says no
    with pytest.raises(ValueError, match="--pretrain.seq_len"):
        recipe.check()


def test_a_run_folder_of_the_dataclass_recipes_is_still_the_same_run(tmp_path):
    """recipe.json written before the recipe became pydantic models: the same recipe loads from
    it, dumps to the very same JSON, and check_run_dir accepts the folder as its run."""
    from training.config import recipe_from_dict
    from training.stage_dirs import RECIPE_FILE, check_run_dir

    stored_text = (FIXTURES / "tiny_run_recipe.json").read_text(encoding="utf-8")
    stored = json.loads(stored_text)
    recipe = recipe_from_dict(stored["recipe"])
    # same keys in the same order with the same values; fields added to the recipe since then
    # (and only those) come on top, at their defaults, which are what the old code did
    dumped, added = recipe.to_dict(), []
    for section, fields in stored["recipe"].items():
        if isinstance(fields, dict):
            extra = {k: v for k, v in dumped[section].items() if k not in fields}
            defaults = type(getattr(recipe, section))().model_dump()
            assert extra == {k: defaults[k] for k in extra}
            added += [f"{section}.{k}" for k in extra]
            dumped[section] = {k: v for k, v in dumped[section].items() if k in fields}
    for section in [s for s in dumped if s not in stored["recipe"]]:  # new sections, fields
        if section in SECTION_MODELS:
            assert dumped.pop(section) == type(getattr(recipe, section))().model_dump()
            added.append(f"{section} (section)")
        else:  # a new top-level field
            assert dumped.pop(section) == Recipe.model_fields[section].default
            added.append(section)
    assert json.dumps(dumped) == json.dumps(stored["recipe"])
    assert added == [
        "data.sft_repeat",
        "tokenizer.chat_files",
        "tokenizer.chat_max_chars",
        "pretrain.lora",
        "pretrain.enabled",
        "pretrain.max_time_s",
        "sft.lora",
        "sft.max_train_samples",
        "dpo.lora",
        "base",
        "export (section)",
    ]
    run = tmp_path / "run"
    run.mkdir()
    (run / RECIPE_FILE).write_text(stored_text, encoding="utf-8")
    (run / "tokenizer").mkdir()
    assert check_run_dir(run, recipe) is True
