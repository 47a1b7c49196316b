import pytest

from rag.errors import Conflict, InvalidInput, NotFound
from rag.models import Upload
from rag.service import KnowledgeBaseService
from tests.rag.conftest import IDIOMS, save_static_embedder
from tests.rag.files import (
    UTF16_CHINESE,
    encrypt_pdf,
    make_docx,
    make_pdf,
    make_zip_bomb_docx,
)


def idiom_uploads() -> list[Upload]:
    return [
        Upload(filename=f"{word}.txt", data=text.encode("gbk")) for word, text in IDIOMS.items()
    ]


def test_create_list_delete_kb(service):
    assert service.list_kbs() == []
    info = service.create_kb("demo")
    assert (info.name, info.documents, info.chunks) == ("demo", 0, 0)
    service.create_kb("另一个")
    assert [k.name for k in service.list_kbs()] == ["demo", "另一个"]
    with pytest.raises(Conflict, match="already exists"):
        service.create_kb("demo")
    service.delete_kb("demo")
    assert [k.name for k in service.list_kbs()] == ["另一个"]
    with pytest.raises(NotFound):
        service.delete_kb("demo")
    if service.settings.backend == "local":  # postgres: test_postgres_backend checks its rows
        assert sorted(
            p.name for p in service.settings.kb_dir.iterdir() if not p.name.startswith(".")
        ) == ["另一个"]


@pytest.mark.parametrize("name", ["a/b", "..", "x" * 65, "../../etc"])
def test_bad_kb_names_are_invalid_input_everywhere(service, name):
    with pytest.raises(InvalidInput):
        service.create_kb(name)
    with pytest.raises(InvalidInput):
        service.search(name, "问题")


def test_unknown_kb_and_document_are_not_found(service):
    for call in (
        lambda: service.get_kb("nope"),
        lambda: service.list_documents("nope"),
        lambda: service.add_documents("nope", idiom_uploads()),
        lambda: service.search("nope", "问题"),
        lambda: service.reindex("nope"),
    ):
        with pytest.raises(NotFound, match="does not exist"):
            call()
    service.create_kb("demo")
    with pytest.raises(NotFound, match="not in knowledge base"):
        service.delete_document("demo", "0123456789abcdef")


def test_add_several_files_of_every_kind_records_encoding_and_chunks(service):
    service.create_kb("demo")
    uploads = [
        Upload(filename="notes_gbk.txt", data=IDIOMS["守株待兔"].encode("gbk")),
        Upload(filename="utf16.md", data=IDIOMS["画蛇添足"].encode("utf-16")),
        Upload(
            filename="book.pdf",
            data=make_pdf(["第一页：" + IDIOMS["亡羊补牢"], "第二页：" + IDIOMS["掩耳盗铃"]]),
        ),
        Upload(filename="report.docx", data=make_docx(["井底之蛙比喻见识狭窄的人。"])),
        Upload(filename="page.html", data="<p>对牛弹琴比喻对不懂道理的人讲道理。</p>".encode()),
        Upload(filename="t.csv", data="成语,释义\n杯弓蛇影,疑神疑鬼\n".encode()),
        Upload(filename="t.jsonl", data='{"成语": "叶公好龙", "释义": "口头上爱好"}\n'.encode()),
    ]
    result = service.add_documents("demo", uploads)
    assert [r.status for r in result.results] == ["added"] * 7
    by_name = {r.filename: r.document for r in result.results}
    assert by_name["notes_gbk.txt"].encoding == "gb18030"
    assert by_name["utf16.md"].encoding == "utf-16"
    assert by_name["book.pdf"].pages == 2
    info = service.get_kb("demo")
    assert info.documents == 7 and info.chunks == sum(d.chunks for d in by_name.values())
    hits = service.search("demo", "掩耳盗铃", top_k=1)
    assert hits[0].filename == "book.pdf" and hits[0].page == 2
    assert hits[0].text[:4] in hits[0].text and hits[0].end - hits[0].start == len(hits[0].text)


def test_bomless_utf16_chinese_upload_is_stored_as_its_text(tmp_path, make_settings):
    service = KnowledgeBaseService(make_settings(chunk_size=1000))  # one chunk per file
    service.create_kb("demo")
    uploads = [
        Upload(filename=f"{name}.txt", data=text.encode("utf-16-le"))
        for name, text in UTF16_CHINESE.items()
    ]
    result = service.add_documents("demo", uploads)
    assert [(r.status, r.document.encoding) for r in result.results] == [
        ("added", "utf-16-le")
    ] * len(uploads)
    for name, text in UTF16_CHINESE.items():
        hits = service.search("demo", text[:12], top_k=len(uploads))
        stored = next(h for h in hits if h.filename == f"{name}.txt")
        assert stored.text == text.strip() and (stored.start, stored.end) == (0, len(text.strip()))


def test_planted_chunk_comes_first_in_every_mode(service):
    service.create_kb("demo")
    filler = [
        Upload(
            filename=f"filler{i}.txt",
            data=f"第{i}段无关的内容：今天天气很好，我们去公园散步。".encode(),
        )
        for i in range(10)
    ]
    service.add_documents("demo", filler + idiom_uploads())
    for mode in ("hybrid", "bm25", "dense"):
        hits = service.search("demo", "亡羊补牢是什么意思", top_k=3, mode=mode)
        assert hits[0].filename == "亡羊补牢.txt", mode
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    hit = service.search("demo", "亡羊补牢是什么意思")[0]
    assert hit.bm25_rank == 1 and hit.dense_rank == 1


def test_retriever_is_a_langchain_retriever(service):
    from langchain_core.retrievers import BaseRetriever

    service.create_kb("demo")
    service.add_documents("demo", idiom_uploads())
    retriever = service.retriever("demo", top_k=2)
    assert isinstance(retriever, BaseRetriever)
    docs = retriever.invoke("守株待兔")
    assert (
        len(docs) == 2
        and docs[0].metadata["filename"] == "守株待兔.txt"
        and "score" in docs[0].metadata
    )


def test_same_content_twice_is_a_duplicate(service):
    service.create_kb("demo")
    data = IDIOMS["守株待兔"].encode()
    first = service.add_documents(
        "demo", [Upload(filename="a.txt", data=data), Upload(filename="b.txt", data=data)]
    )
    assert [r.status for r in first.results] == ["added", "duplicate"]
    again = service.add_documents("demo", [Upload(filename="c.txt", data=data)])
    assert again.results[0].status == "duplicate"
    assert (
        again.results[0].duplicate_of == first.results[0].document.id
        and "a.txt" in again.results[0].reason
    )
    assert service.get_kb("demo").documents == 1


def test_bad_uploads_are_rejected_and_leave_the_kb_unchanged(tmp_path, make_settings):
    service = KnowledgeBaseService(make_settings(max_upload_bytes=2000, max_unzipped_bytes=1 << 20))
    service.create_kb("demo")
    service.add_documents("demo", idiom_uploads()[:1])
    before = (service.list_documents("demo"), service.get_kb("demo"), service.counts("demo"))
    bad = {
        "empty.txt": b"",
        "junk.txt": bytes(range(256)) * 4,
        "tool.exe": b"MZ",
        "broken.pdf": b"%PDF-1.4 broken",
        "secret.pdf": encrypt_pdf(make_pdf(["秘密"])),
        "bomb.docx": make_zip_bomb_docx(4 << 20),
        "big.txt": "大".encode() * 1000,
        "../escape.txt": b"x",
        "/etc/passwd.txt": b"x",
        "nul\x00.txt": b"x",
    }
    result = service.add_documents("demo", [Upload(filename=n, data=d) for n, d in bad.items()])
    errors = {r.filename: r.error for r in result.results}
    assert all(r.status == "rejected" and r.reason for r in result.results)
    assert errors["big.txt"] == "too_large" and errors["bomb.docx"] == "too_large"
    assert errors["junk.txt"] == "invalid_input"
    # nothing written: same documents, same last-write time, same stored rows
    assert (
        service.list_documents("demo"),
        service.get_kb("demo"),
        service.counts("demo"),
    ) == before
    with pytest.raises(InvalidInput, match="no files"):
        service.add_documents("demo", [])


@pytest.mark.parametrize("query", ["", "   ", "\n"])
def test_empty_query_is_invalid(service, query):
    service.create_kb("demo")
    with pytest.raises(InvalidInput, match="empty"):
        service.search("demo", query)


def test_search_of_an_empty_kb_returns_nothing(service):
    service.create_kb("demo")
    assert service.search("demo", "问题") == []


def test_delete_document_removes_its_vectors_and_bm25_rows(service):
    service.create_kb("demo")
    result = service.add_documents("demo", idiom_uploads())
    doc = next(r.document for r in result.results if r.filename == "守株待兔.txt")
    removed = service.delete_document("demo", doc.id)
    assert removed.id == doc.id
    assert doc.id not in {d.id for d in service.list_documents("demo")}
    for mode in ("hybrid", "bm25", "dense"):
        assert all(
            h.document_id != doc.id for h in service.search("demo", "守株待兔", top_k=10, mode=mode)
        )
    counts = service.counts("demo")
    assert counts["vectors"] == counts["lexical_rows"] == counts["chunks"]
    assert counts["chunks"] == service.get_kb("demo").chunks > 0
    # a fresh service (another process) sees the same
    fresh = KnowledgeBaseService(service.settings)
    assert all(h.document_id != doc.id for h in fresh.search("demo", "守株待兔", top_k=10))


def test_reindex_applies_new_chunking_and_embedder(tmp_path, make_settings):
    service = KnowledgeBaseService(make_settings(chunk_size=200, chunk_overlap=0))
    service.create_kb("demo")
    long_text = "\n".join(IDIOMS.values())
    service.add_documents("demo", [Upload(filename="all.txt", data=long_text.encode("gbk"))])
    assert service.get_kb("demo").chunks == 1
    smaller = KnowledgeBaseService(make_settings(chunk_size=30, chunk_overlap=5))
    result = smaller.reindex("demo")
    assert result.documents == 1 and result.chunks > 3
    assert smaller.get_kb("demo").chunks == result.chunks
    assert smaller.search("demo", "掩耳盗铃", top_k=1)[0].text.startswith("掩耳盗铃")


def test_a_different_embedder_needs_a_reindex(tmp_path, service):
    from rag.embeddings import Embedder, HashingEmbeddings

    service.create_kb("demo")
    service.add_documents("demo", idiom_uploads())
    other = KnowledgeBaseService(
        service.settings, embedder=Embedder(HashingEmbeddings(dim=64), "hashing-64")
    )
    with pytest.raises(Conflict, match="reindex"):
        other.search("demo", "守株待兔")
    other.reindex("demo")
    assert other.search("demo", "守株待兔", top_k=1)[0].filename == "守株待兔.txt"


def test_concurrent_uploads_to_one_kb_all_land(service):
    from concurrent.futures import ThreadPoolExecutor

    service.create_kb("demo")
    uploads = [
        Upload(filename=f"doc{i}.txt", data=f"第{i}号文件：{text}".encode())
        for i, text in enumerate(list(IDIOMS.values()) * 2)
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda u: service.add_documents("demo", [u]), uploads))
    assert all(r.results[0].status == "added" for r in results)
    assert service.get_kb("demo").documents == len(uploads)
    assert {d.filename for d in service.list_documents("demo")} == {u.filename for u in uploads}


def test_an_embedder_retrained_in_the_same_folder_needs_a_reindex(tmp_path, make_settings):
    """The KB records the embedder folder with a digest of its files: new weights at the same
    path are a different embedder, not silently mixed with the old vectors."""
    folder = tmp_path / "embedder"

    def save_model(seed: int) -> None:
        save_static_embedder(folder, seed)

    save_model(0)
    kb_settings = make_settings(embedding_model=str(folder))
    first = KnowledgeBaseService(kb_settings)
    first.create_kb("demo")
    first.add_documents("demo", idiom_uploads())
    first_id = first.get_kb("demo").embedding_model
    assert first_id.startswith(f"{folder.resolve()}@")
    assert KnowledgeBaseService(kb_settings).search("demo", "守株待兔")  # same model: fine
    save_model(1)  # retrained in place
    retrained = KnowledgeBaseService(kb_settings)
    with pytest.raises(Conflict, match="reindex"):
        retrained.search("demo", "守株待兔")
    retrained.reindex("demo")
    assert retrained.get_kb("demo").embedding_model not in (None, first_id)
    assert retrained.search("demo", "守株待兔", top_k=1)


def test_several_kbs_pooled_rank_as_one_kb_would(service):
    """The default (`pooled`): every KB's candidates ranked together by their raw scores. Dense
    similarities compare across KBs, so two KBs' pooled dense ranking is the ranking of one KB
    holding both's documents; in hybrid mode, a KB with nothing on the question does not push
    its best guess above the other's answer (what rank fusion does on a tie)."""
    uploads = idiom_uploads()
    for name, files in (("甲", uploads[:2]), ("乙", uploads[2:]), ("全", uploads)):
        service.create_kb(name)
        service.add_documents(name, files)
    query = "自己欺骗自己"  # 掩耳盗铃, in 乙 only
    pooled = service.search_many(["甲", "乙"], query, top_k=4, mode="dense")
    whole = service.search("全", query, top_k=4, mode="dense")
    assert [(h.filename, h.chunk_index) for h in pooled] == [
        (h.filename, h.chunk_index) for h in whole
    ]
    assert [h.score for h in pooled] == pytest.approx([h.score for h in whole])
    assert {h.knowledge_base for h in pooled} == {"甲", "乙"}
    hybrid = service.search_many(["甲", "乙"], query, top_k=3)
    assert (hybrid[0].knowledge_base, hybrid[0].filename) == ("乙", "掩耳盗铃.txt")
    service.settings.multi_kb_fusion = "rank"
    ranked = service.search_many(["甲", "乙"], query, top_k=3)
    assert ranked[0].knowledge_base == "甲"  # rank 1 of each tie: the KB named first wins


def test_several_kbs_fused_by_rank(service):
    """`multi_kb_fusion: rank`: each KB's own ranking, fused by reciprocal rank (ties to the KB
    named first); a passage in both KBs comes once from each, named by its KB."""
    service.settings.multi_kb_fusion = "rank"
    uploads = idiom_uploads()
    service.create_kb("甲")
    service.create_kb("乙")
    service.add_documents("甲", uploads[:3])
    service.add_documents("乙", uploads[2:])  # 亡羊补牢 in both
    query = "比喻做了多余的事"
    alone = {kb: service.search(kb, query, top_k=3) for kb in ("甲", "乙")}
    fused: dict[tuple[str, str], float] = {}
    for kb, hits in alone.items():
        for rank, hit in enumerate(hits, start=1):
            fused[(kb, hit.chunk_id)] = 1 / (service.settings.rrf_k + rank)
    expected = sorted(fused.items(), key=lambda item: item[1], reverse=True)[:4]

    got = service.search_many(["甲", "乙"], query, top_k=4)
    assert [(h.knowledge_base, h.chunk_id) for h in got] == [key for key, _ in expected]
    assert [h.score for h in got] == [score for _, score in expected]
    shared = service.search_many(["甲", "乙"], "亡羊补牢", top_k=10)
    assert sorted(h.knowledge_base for h in shared if h.filename == "亡羊补牢.txt") == ["乙", "甲"]
    # one KB: its own ranking and scores
    assert service.search_many(["乙"], query, top_k=3) == alone["乙"]


@pytest.mark.parametrize("fusion", ["pooled", "rank"])
def test_several_kbs_refusals(service, fusion):
    service.settings.multi_kb_fusion = fusion
    service.create_kb("甲")
    with pytest.raises(InvalidInput, match="named twice"):
        service.search_many(["甲", "甲"], "问题")
    with pytest.raises(InvalidInput, match="at most 8"):
        service.search_many([f"kb{i}" for i in range(9)], "问题")
    with pytest.raises(InvalidInput, match="at least one"):
        service.search_many([], "问题")
    with pytest.raises(NotFound):
        service.search_many(["甲", "没有"], "问题")
