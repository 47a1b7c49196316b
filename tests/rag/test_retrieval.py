import pytest

from rag.bm25 import BM25Index, chargram_tokens
from rag.hybrid_retriever import reciprocal_rank_fusion

DOCS = {
    "a": "画蛇添足比喻做了多余的事，反而不恰当。",
    "b": "守株待兔比喻死守狭隘经验，不知变通。",
    "c": "今天天气很好，我们去公园散步吧。Machine learning 很有趣。",
}


def test_chargram_tokens_cover_characters_bigrams_and_latin_words():
    expected = ["画", "蛇", "添", "足", "画蛇", "蛇添", "添足", "gpt", "4"]
    assert chargram_tokens("画蛇添足 GPT-4") == expected


@pytest.mark.parametrize("tokenizer", ["chargram", "jieba"])
def test_bm25_finds_the_planted_chunk_survives_save_load_and_remove(tmp_path, tokenizer):
    index = BM25Index(tokenizer)
    index.add(list(DOCS), list(DOCS.values()))
    assert index.search("守株待兔", 3)[0][0] == "b"
    assert index.search("machine learning", 3)[0][0] == "c"
    assert index.search("完全无关的词汇龘", 3) == [] or index.search("龘", 3) == []
    index.save(tmp_path)
    loaded = BM25Index.load(tmp_path)
    assert loaded.search("画蛇添足", 1) == index.search("画蛇添足", 1)
    loaded.remove({"b"})
    assert all(chunk_id != "b" for chunk_id, _ in loaded.search("守株待兔", 3))
    loaded.add(["d"], ["守株待兔的农夫"])
    assert loaded.search("守株待兔", 1)[0][0] == "d"


def test_reciprocal_rank_fusion_rewards_agreement_and_respects_weights():
    fused = reciprocal_rank_fusion([(["x", "y", "z"], 1.0), (["y", "x", "w"], 1.0)], rrf_k=60)
    assert {fused[0][0], fused[1][0]} == {"x", "y"}
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    assert [i for i, _ in fused[2:]] in (["z", "w"], ["w", "z"])
    only_second = reciprocal_rank_fusion([(["x"], 0.0), (["y"], 1.0)])
    assert only_second[0][0] == "y"
