import json
import os

from rag.cli import main
from tests.rag.conftest import IDIOMS
from tests.rag.files import make_pdf


def test_create_add_search_list_remove(tmp_path, capsys, monkeypatch, backend):
    monkeypatch.setenv("XIAOPHI_KB_DIR", str(tmp_path / "kb"))
    monkeypatch.setenv("XIAOPHI_KB_EMBEDDING_MODEL", "hashing")
    flags = ["--backend", backend["backend"]]
    if "database_url" in backend:
        flags += ["--database-url", backend["database_url"]]
    pdf = tmp_path / "some.pdf"
    pdf.write_bytes(make_pdf(["问题：" + IDIOMS["亡羊补牢"]]))
    gbk = tmp_path / "notes_gbk.txt"
    gbk.write_bytes(IDIOMS["守株待兔"].encode("gbk"))
    assert main([*flags, "create", "demo"]) == 0
    assert main([*flags, "add", "demo", str(pdf), str(gbk)]) == 0
    out = capsys.readouterr().out
    assert "added     some.pdf" in out and "gb18030" in out
    assert main([*flags, "search", "demo", "问题"]) == 0
    assert "some.pdf p.1" in capsys.readouterr().out
    assert main([*flags, "--json", "list", "demo"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert {d["filename"] for d in docs} == {"some.pdf", "notes_gbk.txt"}
    assert main([*flags, "remove", "demo", docs[0]["id"]]) == 0
    assert main([*flags, "reindex", "demo"]) == 0
    assert main([*flags, "list"]) == 0
    assert "demo\t1 documents" in capsys.readouterr().out
    # the other backend holds nothing of it
    other = "postgres" if backend["backend"] == "local" else "local"
    if other == "local":
        assert main(["--backend", "local", "list"]) == 0
        assert "(no knowledge bases)" in capsys.readouterr().out


def test_migrate_copies_local_kbs_into_postgres_and_verifies(
    tmp_path, capsys, monkeypatch, database_url
):
    from rag.config import KBSettings
    from rag.service import KnowledgeBaseService

    monkeypatch.setenv("XIAOPHI_KB_DIR", str(tmp_path / "kb"))
    monkeypatch.setenv("XIAOPHI_KB_EMBEDDING_MODEL", "hashing")
    files = []
    for word, text in IDIOMS.items():
        files.append(tmp_path / f"{word}.txt")
        files[-1].write_text(text * 3, encoding="gbk")
    assert main(["create", "idioms"]) == 0
    assert main(["add", "idioms", *map(str, files)]) == 0
    assert main(["create", "empty"]) == 0
    capsys.readouterr()
    assert main(["migrate", "--to", database_url]) == 0
    out = capsys.readouterr().out
    assert "migrated  idioms: 4 documents" in out and "migrated  empty: 0 documents" in out

    local = KnowledgeBaseService(KBSettings(kb_dir=tmp_path / "kb", embedding_model="hashing"))
    remote = KnowledgeBaseService(
        KBSettings(embedding_model="hashing", backend="postgres", database_url=database_url)
    )
    assert remote.list_kbs() == local.list_kbs()  # names, counts, embedder and times
    assert remote.list_documents("idioms") == local.list_documents("idioms")
    assert remote.counts("idioms") == local.counts("idioms")
    for mode in ("bm25", "dense", "hybrid"):
        for query in ("守株待兔", "比喻做了多余的事"):
            want = [
                (h.chunk_id, round(h.score, 4)) for h in local.search("idioms", query, 10, mode)
            ]
            got = [
                (h.chunk_id, round(h.score, 4)) for h in remote.search("idioms", query, 10, mode)
            ]
            assert got == want, (mode, query)
    # originals came along: a reindex there rebuilds the same chunks
    assert remote.reindex("idioms").chunks == local.get_kb("idioms").chunks
    # a second run refuses to overwrite and says what to do
    assert main(["migrate", "--to", database_url]) == 2
    assert "already exists in the database" in capsys.readouterr().err
    assert main(["migrate", "--to", "mysql://x"]) == 2
    assert "PostgreSQL URL" in capsys.readouterr().err
    remote.close()


def test_errors_are_clear_messages_with_nonzero_exit(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XIAOPHI_KB_DIR", str(tmp_path / "kb"))
    monkeypatch.setenv("XIAOPHI_KB_EMBEDDING_MODEL", "hashing")
    assert main(["search", "nope", "问题"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["create", "a/b"]) == 2
    assert main(["create", "demo"]) == 0
    assert main(["search", "demo", "  "]) == 2
    assert "query is empty" in capsys.readouterr().err
    junk = tmp_path / "junk.txt"
    junk.write_bytes(bytes(range(256)) * 4)
    assert main(["add", "demo", str(junk)]) == 1
    assert "rejected  junk.txt" in capsys.readouterr().out
    assert main(["add", "demo", str(tmp_path / "missing.txt")]) == 2
    assert main(["--embedding-model", "runs/none/embedder", "search", "demo", "问题"]) == 2
    assert "xiaophi-train embedder" in capsys.readouterr().err


def test_the_cli_leaves_the_callers_environment_as_it_found_it(tmp_path, monkeypatch):
    # The CLI keeps its own terminal free of progress bars, but main() is also called in-process
    # (tests, the API's tests): a variable left behind would silence every later child process's
    # bars too (it hid transformers' "Writing model shards" from a pipeline run in the suite).
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    before = dict(os.environ)
    assert main(["--kb-dir", str(tmp_path / "kb"), "--embedding-model", "hashing", "list"]) == 0
    assert dict(os.environ) == before
