from langchain_core.documents import Document

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
