"""The reranking stage after fusion (rag/rerank.py) and its wiring into search."""

from __future__ import annotations

import pytest

from rag.config import KBSettings
from rag.errors import EmbedderUnavailable
from rag.models import Upload
from rag.rerank import CrossEncoderReranker, rerank
from rag.service import KnowledgeBaseService
from tests.rag.conftest import IDIOMS, settings

TEXTS = {"a": "画蛇添足", "b": "守株待兔", "c": "亡羊补牢", "d": "掩耳盗铃"}


class PlantedReranker:
    """Scores a passage by where it stands in `order` (first = best); counts its calls."""

    model_id = "planted"

    def __init__(self, order: list[str]):
        self.order = order
        self.calls: list[list[str]] = []

    def score(self, query, passages):
        self.calls.append(list(passages))
        return [
            float(len(self.order) - self.order.index(p)) if p in self.order else 0.0
            for p in passages
        ]


def texts_of(ids):
    return {i: TEXTS[i] for i in ids if i in TEXTS}


def test_the_reranker_reorders_a_planted_case_and_weight_zero_keeps_the_fused_order():
    fused = [("a", 3.0), ("b", 2.0), ("c", 1.0)]
    planted = PlantedReranker(["亡羊补牢", "守株待兔", "画蛇添足"])  # c best, then b, then a
    # fused norm a 1, b 0.5, c 0; reranker norm c 1, b 0.5, a 0; weight 2 → c 2, b 1.5, a 1
    out = rerank("问", fused, texts_of, planted, top_n=3, weight=2.0)
    assert out == [("c", pytest.approx(2.0)), ("b", pytest.approx(1.5)), ("a", pytest.approx(1.0))]
    assert [i for i, _ in rerank("问", fused, texts_of, planted, 3, weight=0.0)] == ["a", "b", "c"]
    # a small weight only breaks the fused order where the reranker is sure enough
    assert [i for i, _ in rerank("问", fused, texts_of, planted, 3, weight=0.5)] == ["a", "b", "c"]


def test_only_the_top_n_are_rescored_and_vanished_chunks_are_dropped():
    fused = [("a", 4.0), ("gone", 3.5), ("b", 3.0), ("c", 2.0), ("d", 1.0)]
    planted = PlantedReranker(["守株待兔"])
    out = rerank("问", fused, texts_of, planted, top_n=3, weight=10.0)
    assert planted.calls == [["画蛇添足", "守株待兔"]]  # `gone` has no text; c, d beyond top_n
    assert [i for i, _ in out] == ["b", "a"]


def test_rerank_refuses_bad_arguments():
    fused = [("a", 1.0)]
    with pytest.raises(ValueError, match="top_n"):
        rerank("q", fused, texts_of, PlantedReranker([]), top_n=0)
    with pytest.raises(ValueError, match="weight"):
        rerank("q", fused, texts_of, PlantedReranker([]), top_n=1, weight=-1.0)

    class Short:
        model_id = "short"

        def score(self, query, passages):
            return []

    with pytest.raises(ValueError, match="0 scores for 1 passages"):
        rerank("q", fused, texts_of, Short(), top_n=1)


def idiom_service(tmp_path, reranker=None, **kw) -> KnowledgeBaseService:
    service = KnowledgeBaseService(settings(tmp_path, **kw), reranker=reranker)
    service.create_kb("kb")
    uploads = [Upload(filename=f"{w}.txt", data=t.encode()) for w, t in IDIOMS.items()]
    service.add_documents("kb", uploads)
    return service


def test_search_hands_hybrid_results_to_the_reranker_and_single_modes_skip_it(tmp_path):
    planted = PlantedReranker([IDIOMS["掩耳盗铃"]])
    service = idiom_service(tmp_path, planted, rerank_weight=100.0)
    without = idiom_service(tmp_path / "plain")
    query = "守株待兔比喻什么"
    assert without.search("kb", query, top_k=2)[0].filename == "守株待兔.txt"
    hits = service.search("kb", query, top_k=2)
    assert hits[0].filename == "掩耳盗铃.txt"  # the planted passage, lifted by the reranker
    # last in the fused order (norm 0) + 100 × the reranker's best (norm 1)
    assert hits[0].score == pytest.approx(100.0) and hits[1].score <= 1.0
    assert service.search("kb", query, top_k=2, mode="bm25")[0].filename == "守株待兔.txt"
    calls = len(planted.calls)
    service.search("kb", query, mode="dense")
    assert len(planted.calls) == calls


def save_tiny_cross_encoder(folder) -> None:
    """A randomly initialised BERT cross-encoder over the test idioms' characters."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    chars = sorted(set("".join(IDIOMS.values()) + "守株待兔比喻什么"))
    vocab = {
        "[PAD]": 0,
        "[UNK]": 1,
        "[CLS]": 2,
        "[SEP]": 3,
        **{c: i + 4 for i, c in enumerate(chars)},
    }
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=128,
    )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
        num_labels=1,
        pad_token_id=0,
    )
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    fast.save_pretrained(folder)


def test_a_cross_encoder_folder_loads_and_orders_the_hits_by_its_own_scores(tmp_path):
    folder = tmp_path / "ce"
    save_tiny_cross_encoder(folder)
    service = KnowledgeBaseService(settings(tmp_path, reranker=str(folder), rerank_weight=1e6))
    service.create_kb("kb")
    service.add_documents(
        "kb", [Upload(filename=f"{w}.txt", data=t.encode()) for w, t in IDIOMS.items()]
    )
    assert isinstance(service.reranker, CrossEncoderReranker)
    query = "守株待兔比喻什么"
    hits = service.search("kb", query, top_k=4)
    own = service.reranker.score(query, [h.text for h in hits])
    assert own == sorted(own, reverse=True)  # with weight 1e6 its scores decide the order
    assert len(set(own)) > 1  # a real model, not a constant
    # a passage longer than the model's 128 positions is truncated, not an error
    assert len(service.reranker.score(query, ["守株待兔" * 200])) == 1


def test_reranker_settings_are_checked():
    assert KBSettings(reranker="  ").reranker is None
    with pytest.raises(ValueError, match="rerank_top_n"):
        KBSettings(rerank_top_n=0)
    with pytest.raises(ValueError, match="rerank_weight"):
        KBSettings(rerank_weight=-0.5)
    with pytest.raises(EmbedderUnavailable, match="XIAOPHI_KB_RERANKER"):
        CrossEncoderReranker("/no/such/reranker")
