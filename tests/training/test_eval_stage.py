"""The pipeline ends with the eval stage, and its chat checkpoints carry decoding defaults."""

from __future__ import annotations

import json

import pytest

from tests.training.conftest import IDIOMS, tiny_overrides
from training.config import load_recipe
from training.pipeline import run_pipeline


@pytest.mark.slow
def test_pipeline_ends_with_the_eval_table_and_writes_decoding_defaults(tiny_data, tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    rows = [
        {"kind": kind, "subject": f"{k}{n}", "answer": v, "split": "test" if n else "dev"}
        for kind in ("idiom", "word", "xiehouyu")
        for n, (k, v) in enumerate(IDIOMS.items())
    ]
    heldout.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    overrides = tiny_overrides(
        tiny_data,
        **{
            "eval.enabled": True,
            "eval.heldout": str(heldout),
            "eval.limit": 3,
            "eval.max_new_tokens": 8,
            "decoding.repetition_penalties": ["1.0", "1.3"],
        },
    )
    summary = run_pipeline(load_recipe("tiny", overrides), tmp_path / "run", log=lambda *a: None)
    ev = summary["eval"]
    assert ev["split"] == "test" and set(ev["results"]) == {"untrained", "pretrain", "dpo"}
    for column in ev["results"].values():
        assert column["xiaophi_idiom_mc"]["n"] == 3
        assert 0 <= column["xiaophi_idiom_mc"]["acc"] <= 1
        assert column["xiaophi_idiom_mc"]["acc_ci95"] is not None
        assert column["xiaophi_heldout_bpc"]["bits_per_char"] > 0
    # training lowers held-out bits per character
    bpc = {m: c["xiaophi_heldout_bpc"]["bits_per_char"] for m, c in ev["results"].items()}
    assert bpc["pretrain"] < bpc["untrained"]
    assert (
        "idiom_mc (n=3)" in ev["table"] and (tmp_path / "run" / "eval" / "results.json").is_file()
    )
    # the eval stage asks the run's chat model (dpo) the first probe questions
    assert ev_report_probe(tmp_path / "run") == summary["probe"]
    assert len(summary["probe"]) == 3 and all("answer" in p for p in summary["probe"])
    for stage in ("sft", "dpo"):
        decoding = summary["decoding"][stage]
        chosen = decoding["chosen"]["settings"]
        config = json.loads((tmp_path / "run" / stage / "generation_config.json").read_text())
        assert config.get("repetition_penalty", 1.0) == chosen["repetition_penalty"]
        assert len(decoding["candidates"]) == 2 and decoding["probes"] == 4


def ev_report_probe(run):
    return json.loads((run / "eval" / "stage_report.json").read_text())["probe"]


def test_the_probe_answers_with_the_checkpoints_own_decoding_defaults(tmp_path):
    """The probe (and `xiaophi-train chat`) must answer as the served checkpoint does: with the
    repetition penalty chosen on the dev probes and saved in generation_config.json, not with
    plain greedy (the demo's probe once looped where the served model stops)."""
    from tests.conftest import build_tiny_checkpoint
    from training.eval.probe import ask, probe_model
    from training.model_factory import load_model_and_tokenizer

    model_dir = build_tiny_checkpoint(tmp_path / "m", seed=3)
    probe_file = tmp_path / "probe.jsonl"
    probe_file.write_text(json.dumps({"prompt": "桃园结义", "completion": "x"}) + "\n", "utf-8")
    plain = probe_model(model_dir, probe_file, limit=1, max_new_tokens=24)[0]

    config = json.loads((model_dir / "generation_config.json").read_text())
    config["repetition_penalty"] = 3.0
    (model_dir / "generation_config.json").write_text(json.dumps(config))
    model, tokenizer = load_model_and_tokenizer(model_dir, "test")
    assert model.generation_config.repetition_penalty == 3.0
    # the end-of-turn ids still come from the tokenizer saved beside the model
    assert model.generation_config.eos_token_id == [
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    ]
    penalised = probe_model(model_dir, probe_file, limit=1, max_new_tokens=24)[0]
    assert penalised["answer"] != plain["answer"]  # the penalty changes this random model's answer
    direct = ask(model, tokenizer, [{"role": "user", "content": "桃园结义"}], 24)
    assert penalised["answer"] == direct["answer"]
