import pytest

from rag.bm25 import BM25Index, chargram_tokens
from rag.hybrid_retriever import convex_fusion, fuse, reciprocal_rank_fusion

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


BM25_HITS = [("clear", 30.0), ("both", 12.0), ("b2", 11.5), ("b3", 10.0)]
DENSE_HITS = [("d1", 0.81), ("both", 0.80), ("d2", 0.79), ("d3", 0.70)]


def test_convex_fusion_puts_a_chunk_found_by_both_first_when_neither_is_sure():
    fused = convex_fusion(
        [([("x", 5.0), ("y", 4.9), ("z", 1.0)], 1.0), ([("y", 0.9), ("x", 0.5), ("w", 0.4)], 1.0)]
    )
    assert fused[0][0] == "y"  # near-top in BM25 and top in dense beats top in BM25 only
    assert fused[0][1] == pytest.approx((4.9 - 1.0) / 4.0 + 1.0)
    assert {i for i, _ in fused} == {"x", "y", "z", "w"}


def test_convex_fusion_keeps_a_confident_bm25_winner_that_rrf_gives_away():
    # BM25 is sure of `clear`; the dense list is nearly flat and misses it.
    convex = fuse(BM25_HITS, DENSE_HITS, "convex", 1.0, 0.5)
    rrf = fuse(BM25_HITS, DENSE_HITS, "rrf", 1.0, 1.0)
    assert convex[0][0] == "clear"
    assert rrf[0][0] == "both"  # agreement outweighs BM25's confidence in rank-only fusion
    # a near tie in BM25 (both vs b2) is broken by the dense vote
    order = [i for i, _ in convex]
    assert order.index("both") < order.index("b2")


def test_fusion_weights_zero_out_a_retriever_and_unknown_fusion_is_refused():
    assert [i for i, _ in fuse(BM25_HITS, DENSE_HITS, "convex", 1.0, 0.0)] == [
        i for i, _ in BM25_HITS
    ]
    assert [i for i, _ in fuse(BM25_HITS, DENSE_HITS, "convex", 0.0, 1.0)] == [
        i for i, _ in DENSE_HITS
    ]
    assert fuse([], [("only", 0.3)], "convex")[0] == ("only", 1.0)
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse(BM25_HITS, DENSE_HITS, "max")


def test_fusion_dev_rule_picks_the_best_mrr_among_hybrids_no_worse_than_either_method():
    from bench.fusion_dev import choose

    def row(r1, r5, r10, mrr):
        return {"recall@1": r1, "recall@5": r5, "recall@10": r10, "mrr": mrr}

    idioms = {
        "bm25": row(0.20, 0.40, 0.50, 0.30),
        "dense": row(0.10, 0.30, 0.40, 0.20),
        "a": row(0.30, 0.50, 0.49, 0.40),  # best MRR but below BM25 on recall@10: not eligible
        "b": row(0.21, 0.45, 0.55, 0.33),
        "c": row(0.22, 0.41, 0.51, 0.33),  # same MRR as b, lower mean: b wins the tie
        "d": row(0.21, 0.41, 0.51, 0.31),
    }
    titles = {
        "bm25": row(0.60, 0.80, 0.90, 0.70),
        "dense": row(0.30, 0.60, 0.70, 0.40),
        "a": row(0.60, 0.80, 0.90, 0.70),
        "b": row(0.60, 0.80, 0.90, 0.70),  # ties BM25 here: still eligible
        "c": row(0.60, 0.80, 0.90, 0.70),
        "d": row(0.60, 0.80, 0.90, 0.70),
    }
    assert choose({"idioms": idioms, "titles": titles}) == "b"
    titles["b"] = row(0.58, 0.80, 0.90, 0.71)  # worse than BM25 on one metric of one kind
    assert choose({"idioms": idioms, "titles": titles}) == "c"
    only_a = {k: {m: t[m] for m in ("bm25", "dense", "a")} for k, t in (("i", idioms),)}
    assert choose(only_a) is None


def test_bm25_scores_of_given_chunks_match_search_and_follow_edits():
    index = BM25Index("chargram")
    index.add(list(DOCS), list(DOCS.values()))
    found = dict(index.search("守株待兔 画蛇", 3))
    assert index.scores("守株待兔 画蛇", ["b", "c", "a"]) == pytest.approx(
        [found["b"], 0.0, found["a"]]
    )
    assert index.scores("龘", ["a"]) == [0.0]
    index.remove({"a"})
    index.add(["d"], ["守株待兔的农夫"])
    found = dict(index.search("守株待兔", 3))
    assert index.scores("守株待兔", ["d", "b"]) == pytest.approx([found["d"], found["b"]])


def _kb_index(texts: dict[str, str]):
    from langchain_core.documents import Document

    from rag.backends.kb_index import KBIndex
    from rag.embeddings import HashingEmbeddings
    from rag.models import Manifest

    embeddings = HashingEmbeddings(64)
    manifest = Manifest(
        name="t",
        created_at=0.0,
        updated_at=0.0,
        bm25_tokenizer="chargram",
        chunk_size=100,
        chunk_overlap=0,
        chunk_unit="chars",
    )
    index = KBIndex.empty(manifest)
    chunks = [Document(page_content=t, metadata={"chunk_id": i}) for i, t in texts.items()]
    index.add_chunks(chunks, embeddings.embed_documents(list(texts.values())), embeddings)
    return index, embeddings


def test_dense_scores_of_given_chunks_are_their_stored_cosines_after_edits_too():
    index, embeddings = _kb_index(DOCS)
    query = embeddings.embed_query("守株待兔")
    searched = dict(index.dense_search(query, 3))
    assert index.dense_scores(query, ["c", "a", "b"]) == pytest.approx(
        [searched["c"], searched["a"], searched["b"]], abs=1e-6
    )
    index.remove_chunks(["a"])  # FAISS rows shift: the id → row map must follow
    searched = dict(index.dense_search(query, 3))
    assert set(searched) == {"b", "c"}
    assert index.dense_scores(query, ["c", "b"]) == pytest.approx(
        [searched["c"], searched["b"]], abs=1e-6
    )


def test_hybrid_candidates_get_their_real_score_from_the_retriever_that_missed_them():
    from rag.hybrid_retriever import HybridRetriever, score_union

    texts = {
        "long": "守株待兔。" + "农夫每天坐在树桩旁边等待，田地荒芜，庄稼都枯死了。" * 3,
        "both": "守株待兔比喻死守狭隘经验",
        "short": "待兔",
        "neither": "今天天气很好",
    }
    index, embeddings = _kb_index(texts)
    query = "守株待兔"
    vector = embeddings.embed_query(query)
    bm25, dense = index.bm25_search(query, 2), index.dense_search(vector, 2)
    assert {i for i, _ in bm25} == {"both", "long"} and {i for i, _ in dense} == {"both", "short"}
    bm25_all, dense_all = score_union(index, query, vector, bm25, dense)
    assert bm25_all[:2] == bm25 and dense_all[:2] == dense
    assert {i for i, _ in bm25_all} == {i for i, _ in dense_all} == {"both", "long", "short"}
    assert dict(bm25_all)["short"] > 0 and dict(dense_all)["long"] > 0  # real, not a guessed 0
    for chunk_id, score in bm25_all:
        assert score == pytest.approx(index.bm25_scores(query, [chunk_id])[0])
    for chunk_id, score in dense_all:
        assert score == pytest.approx(index.dense_scores(vector, [chunk_id])[0], abs=1e-6)

    retriever = HybridRetriever(index=index, embeddings=embeddings, k=2, fetch_k=2)
    got = retriever.invoke(query)
    want = fuse(bm25_all, dense_all, "convex", 1.0, 1.0)[:2]
    assert [d.id for d in got] == [i for i, _ in want]
    assert [d.metadata["score"] for d in got] == pytest.approx([s for _, s in want])
    # ranks still say what each retriever itself returned
    assert [(d.id, d.metadata["bm25_rank"]) for d in got] == [("both", 1), ("short", None)]


def test_chargram_weighted_doubles_single_character_terms_of_the_query_only():
    texts = ["刘备字玄德", "关羽字云长", "张飞字翼德", "玄德公"]
    ids = [str(i) for i in range(len(texts))]
    plain, weighted = BM25Index("chargram"), BM25Index("chargram-weighted")
    assert weighted.unigram_weight == 2.0 and plain.unigram_weight == 1.0
    plain.add(ids, texts)
    weighted.add(ids, texts)
    # same tokens, same counts: documents are unchanged
    assert (plain.counts != weighted.counts).nnz == 0
    query = "玄德"  # 玄, 德 (characters) and 玄德 (bigram)
    chars, bigram = plain.scores("玄 德", ids), plain.scores("玄德", ids)
    only_bigram = [b - c for b, c in zip(bigram, chars, strict=True)]
    expected = [2 * c + g for c, g in zip(chars, only_bigram, strict=True)]
    assert weighted.scores(query, ids) == pytest.approx(expected, rel=1e-5)
    # a query with no single characters (Latin words) scores exactly as before
    assert weighted.scores("machine", ids) == plain.scores("machine", ids)
    assert BM25Index("chargram", unigram_weight=3.0).unigram_weight == 3.0
    with pytest.raises(ValueError, match="unigram_weight"):
        BM25Index("chargram", unigram_weight=-1)


def test_unigram_weight_survives_save_and_load(tmp_path):
    index = BM25Index("chargram-weighted")
    index.add(["a", "b"], ["画蛇添足", "守株待兔"])
    index.save(tmp_path)
    loaded = BM25Index.load(tmp_path)
    assert loaded.unigram_weight == 2.0
    assert loaded.scores("画蛇", ["a", "b"]) == index.scores("画蛇", ["a", "b"])
