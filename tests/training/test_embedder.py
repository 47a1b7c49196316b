"""The embedder stage trains a sentence-transformers model that the KB service can load offline."""

from __future__ import annotations

import json

import pytest

from training.config import EmbedderConfig, Recipe
from training.embedder import load_pairs, main, train_embedder

IDIOM_PAIRS = [
    ("比喻做了多余的事，反而不恰当", "画蛇添足"),
    ("比喻死守狭隘经验，不知变通", "守株待兔"),
    ("比喻出了问题以后想办法补救", "亡羊补牢"),
    ("比喻自己欺骗自己", "掩耳盗铃"),
    ("比喻见识狭窄的人", "井底之蛙"),
    ("比喻对不懂道理的人讲道理", "对牛弹琴"),
    ("比喻疑神疑鬼，妄自惊扰", "杯弓蛇影"),
    ("比喻口头上爱好某事物，实际上并不真爱好", "叶公好龙"),
    ("比喻违反事物发展的客观规律，急于求成", "拔苗助长"),
    ("比喻为了得到利益而不顾后果", "杀鸡取卵"),
    ("比喻事后采取措施已经晚了", "临渴掘井"),
    ("比喻做事有充分的把握", "胸有成竹"),
]
TINY = dict(
    max_steps=40,
    batch_size=12,
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    max_seq_length=32,
    lr=3e-3,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("embedder") / "model"
    cfg = EmbedderConfig(**TINY)
    cfg.vocab_size = 400
    report = train_embedder(IDIOM_PAIRS, out, cfg, eval_pairs=IDIOM_PAIRS)
    return out, report


def test_training_lowers_the_loss_and_improves_pair_retrieval(trained):
    _, report = trained
    assert report["loss_last"] < report["loss_first"]
    assert report["heldout"]["mrr"] > report["heldout_before"]["mrr"]
    assert report["heldout"]["recall@1"] >= 0.5
    assert report["dimension"] == 32


def test_saved_model_loads_offline_through_langchain_and_drives_a_kb(
    trained, tmp_path, monkeypatch
):
    from langchain_huggingface import HuggingFaceEmbeddings

    from rag.config import KBSettings
    from rag.models import Upload
    from rag.service import KnowledgeBaseService

    out, _ = trained
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vector = HuggingFaceEmbeddings(model_name=str(out)).embed_query("画蛇添足")
    assert len(vector) == 32
    service = KnowledgeBaseService(KBSettings(kb_dir=tmp_path / "kb", embedding_model=str(out)))
    service.create_kb("demo")
    docs = [
        Upload(filename=f"{word}.txt", data=f"{word}：{meaning}。".encode("gbk"))
        for meaning, word in IDIOM_PAIRS
    ]
    service.add_documents("demo", docs)
    assert service.get_kb("demo").embedding_model == str(out.resolve())
    hits = service.search("demo", "守株待兔是什么意思", top_k=3)
    assert hits[0].filename == "守株待兔.txt"
    dense = service.search("demo", IDIOM_PAIRS[0][0], top_k=3, mode="dense")
    assert "画蛇添足.txt" in {h.filename for h in dense}


def test_main_trains_into_the_run_dir_from_pairs_files(tmp_path):
    train_file, eval_file = tmp_path / "pairs.jsonl", tmp_path / "pairs_eval.jsonl"
    rows = [json.dumps({"anchor": a, "positive": p}, ensure_ascii=False) for a, p in IDIOM_PAIRS]
    train_file.write_text("\n".join(rows[:10]), encoding="utf-8")
    eval_file.write_text("\n".join(rows[10:]), encoding="utf-8")
    recipe = Recipe(embedder=EmbedderConfig(**{**TINY, "max_steps": 3}))
    recipe.embedder.pairs, recipe.embedder.eval_pairs, recipe.embedder.vocab_size = (
        str(train_file),
        str(eval_file),
        400,
    )
    report = main(recipe, tmp_path / "run")
    assert (tmp_path / "run" / "embedder" / "modules.json").exists()
    assert not (tmp_path / "run" / "embedder.partial").exists()
    assert report["pairs"] == 10 and report["heldout"]["candidates"] == 2


def test_pairs_file_with_a_missing_field_names_the_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="row 2"):
        load_pairs(path)
