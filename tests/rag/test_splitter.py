from pathlib import Path

import pytest
from langchain_core.documents import Document

from rag.embeddings import load_embedder
from rag.errors import EmbedderUnavailable
from rag.service import KnowledgeBaseService
from rag.splitter import split_pages

TEXT = "第一句话在这里。第二句话更长一些，带着逗号。第三句！第四句？" * 6


def test_chunks_respect_size_end_on_sentence_marks_and_record_offsets():
    chunks = split_pages(
        [Document(page_content=TEXT)], chunk_size=40, chunk_overlap=8, base={"doc_id": "d"}
    )
    assert len(chunks) > 3
    for i, chunk in enumerate(chunks):
        meta = chunk.metadata
        assert len(chunk.page_content) <= 40
        assert TEXT[meta["start"] : meta["end"]] == chunk.page_content
        assert meta["chunk_index"] == i and meta["doc_id"] == "d"
    assert sum(c.page_content[-1] in "。！？，" for c in chunks) >= len(chunks) - 1
    assert all(
        b.metadata["start"] < a.metadata["end"] + 1
        for a, b in zip(chunks, chunks[1:], strict=False)
    )


def test_chunk_index_runs_across_pdf_pages_and_page_is_kept():
    pages = [
        Document(page_content=TEXT[:50], metadata={"page": 1}),
        Document(page_content=TEXT[50:100], metadata={"page": 2}),
    ]
    chunks = split_pages(pages, chunk_size=30, chunk_overlap=0, base={})
    assert [c.metadata["chunk_index"] for c in chunks] == list(range(len(chunks)))
    assert {c.metadata["page"] for c in chunks} == {1, 2}
    for c in chunks:
        page_text = pages[c.metadata["page"] - 1].page_content
        assert page_text[c.metadata["start"] : c.metadata["end"]] == c.page_content


WORDS = "画蛇添足 比喻 做了 多余的事 反而 不恰当 。 守株待兔 比喻 死守 狭隘经验 不知变通 。"


def save_word_embedder(folder: Path) -> None:
    """A random sentence-transformers StaticEmbedding whose tokens are whole words: a chunk's
    token count and character count differ several-fold."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import StaticEmbedding
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(sorted(set(WORDS.split())))}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=8)], device="cpu").save(
        str(folder)
    )


def test_chunk_sizes_can_count_the_embedders_tokens(tmp_path):
    from rag.models import Upload
    from tests.rag.conftest import settings

    save_word_embedder(tmp_path / "words")
    text = "\n".join([WORDS] * 8)
    counter = load_embedder(str(tmp_path / "words")).token_counter()
    assert counter("画蛇添足 比喻 龘") == 3  # one token per word, unknown words included

    by_tokens = KnowledgeBaseService(
        settings(
            tmp_path,
            embedding_model=str(tmp_path / "words"),
            chunk_unit="tokens",
            chunk_size=20,
            chunk_overlap=0,
        )
    )
    by_tokens.create_kb("t")
    assert by_tokens.add_documents("t", [Upload(filename="a.txt", data=text.encode())]).added
    index = by_tokens._index("t")
    chunks = [index.chunk(chunk_id) for chunk_id in index.bm25.ids]
    assert len(chunks) > 2
    assert all(counter(c.page_content) <= 20 for c in chunks)
    assert max(len(c.page_content) for c in chunks) > 40  # sized in tokens, not characters
    assert by_tokens._index("t").manifest.chunk_unit == "tokens"


def test_token_chunks_need_an_embedder_with_a_tokenizer(tmp_path):
    from rag.models import Upload
    from tests.rag.conftest import settings

    service = KnowledgeBaseService(settings(tmp_path, chunk_unit="tokens"))  # hashing embedder
    service.create_kb("t")
    with pytest.raises(EmbedderUnavailable, match="XIAOPHI_KB_CHUNK_UNIT=chars"):
        service.add_documents("t", [Upload(filename="a.txt", data=WORDS.encode())])
    assert service.list_documents("t") == []
