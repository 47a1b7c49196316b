import json

from rag.cli import main
from tests.rag.conftest import IDIOMS
from tests.rag.files import make_pdf


def test_create_add_search_list_remove(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XIAOPHI_KB_DIR", str(tmp_path / "kb"))
    monkeypatch.setenv("XIAOPHI_KB_EMBEDDING_MODEL", "hashing")
    pdf = tmp_path / "some.pdf"
    pdf.write_bytes(make_pdf(["问题：" + IDIOMS["亡羊补牢"]]))
    gbk = tmp_path / "notes_gbk.txt"
    gbk.write_bytes(IDIOMS["守株待兔"].encode("gbk"))
    assert main(["create", "demo"]) == 0
    assert main(["add", "demo", str(pdf), str(gbk)]) == 0
    out = capsys.readouterr().out
    assert "added     some.pdf" in out and "gb18030" in out
    assert main(["search", "demo", "问题"]) == 0
    assert "some.pdf p.1" in capsys.readouterr().out
    assert main(["--json", "list", "demo"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert {d["filename"] for d in docs} == {"some.pdf", "notes_gbk.txt"}
    assert main(["remove", "demo", docs[0]["id"]]) == 0
    assert main(["reindex", "demo"]) == 0
    assert main(["list"]) == 0
    assert "demo\t1 documents" in capsys.readouterr().out


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
