"""Recipes: every shipped recipe parses; flags override fields; bad values name the flag."""

import pytest

from training.cli import build_parser, recipe_from_args
from training.config import RECIPES_DIR, load_recipe


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
    ],
)
def test_bad_values_name_the_flag_to_change(overrides, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
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
