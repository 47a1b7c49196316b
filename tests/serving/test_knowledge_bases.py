"""Knowledge-base routes through real HTTP: every route, every bad input, limits, concurrency."""

from __future__ import annotations

import threading
import uuid

import httpx
import pytest

from rag.cli import main as kb_cli
from serving.config import Settings
from tests.rag.conftest import IDIOMS
from tests.rag.files import encrypt_pdf, make_pdf, make_zip_bomb_docx
from tests.serving.conftest import kb_test_settings, run_server, tiny_settings
from tests.serving.kb_helpers import FILLER, kb_state, new_kb, search, upload
from tests.serving.test_errors import assert_error


def test_knowledge_base_lifecycle(kb_server):
    url = kb_server.base_url
    kb = new_kb(kb_server)
    listed = httpx.get(f"{url}/knowledge_bases").json()
    assert listed["object"] == "list" and kb in [k["name"] for k in listed["data"]]
    assert_error(
        httpx.post(f"{url}/knowledge_bases", json={"name": kb}), 409, "conflict_error", "conflict"
    )

    gbk_text = IDIOMS["守株待兔"] + "\n农夫天天守在树桩旁边。"
    response = upload(
        kb_server,
        kb,
        ("守株待兔_gbk.txt", gbk_text.encode("gbk")),
        ("notes.md", ("# 笔记\n\n" + IDIOMS["画蛇添足"]).encode()),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["knowledge_base"] == kb
    results = {r["filename"]: r for r in body["results"]}
    assert [r["status"] for r in body["results"]] == ["added", "added"]
    assert results["守株待兔_gbk.txt"]["document"]["encoding"] == "gb18030"
    assert results["notes.md"]["document"]["chunks"] >= 1
    planted_id = results["守株待兔_gbk.txt"]["document"]["id"]

    # the same content again (under a new name) is a duplicate, next to a file that lands
    response = upload(kb_server, kb, ("again.txt", gbk_text.encode("gbk")), *FILLER[:1])
    assert response.status_code == 200
    statuses = [(r["status"], r["duplicate_of"]) for r in response.json()["results"]]
    assert statuses == [("duplicate", planted_id), ("added", None)]
    response = upload(kb_server, kb, ("again.txt", gbk_text.encode("gbk")))
    assert response.status_code == 200  # only a duplicate: still not an error
    assert response.json()["results"][0]["status"] == "duplicate"

    docs = httpx.get(f"{url}/knowledge_bases/{kb}/documents").json()
    assert docs["object"] == "list"
    assert sorted(d["filename"] for d in docs["data"]) == [
        "filler0.txt",
        "notes.md",
        "守株待兔_gbk.txt",
    ]

    hits = search(kb_server, kb, "守株待兔是什么意思", top_k=2).json()
    assert hits["object"] == "list" and len(hits["data"]) == 2
    first = hits["data"][0]
    assert first["document_id"] == planted_id and "守株待兔" in first["text"]
    assert first["score"] >= hits["data"][1]["score"]

    deleted = httpx.delete(f"{url}/knowledge_bases/{kb}/documents/{planted_id}").json()
    assert deleted["deleted"] is True and deleted["id"] == planted_id
    hits = search(kb_server, kb, "守株待兔是什么意思", top_k=5).json()["data"]
    assert hits and all(h["document_id"] != planted_id for h in hits)
    assert all("守株待兔" not in h["text"] for h in hits)
    assert_error(
        httpx.delete(f"{url}/knowledge_bases/{kb}/documents/{planted_id}"), 404, "not_found_error"
    )

    assert httpx.delete(f"{url}/knowledge_bases/{kb}").json() == {"name": kb, "deleted": True}
    assert kb not in [k["name"] for k in httpx.get(f"{url}/knowledge_bases").json()["data"]]
    assert_error(httpx.get(f"{url}/knowledge_bases/{kb}/documents"), 404, "not_found_error")


@pytest.fixture(scope="module")
def seeded_kb(kb_server) -> str:
    kb = new_kb(kb_server)
    assert upload(kb_server, kb, *FILLER[:2]).status_code == 200
    return kb


BAD_FILES = {
    "empty file": ("empty.txt", b"", 400, "empty"),
    "binary junk": ("junk.txt", bytes(range(256)) * 20, 400, "binary"),
    "unsupported extension": ("tool.exe", b"MZ hello", 400, "unsupported file type"),
    "corrupt pdf": (
        "broken.pdf",
        b"%PDF-1.7\n1 0 obj << /Type /Catalog",
        400,
        "not a readable PDF",
    ),
    "encrypted pdf": ("secret.pdf", encrypt_pdf(make_pdf(["机密"])), 400, "encrypted"),
    "docx zip bomb": ("bomb.docx", make_zip_bomb_docx(2 << 20), 413, "zip bomb"),
    "pdf decompression bomb": (
        "bomb.pdf",
        make_pdf(["机密"], padding=80 << 20),
        413,
        "decompression bomb",
    ),
    "over the size limit": ("big.txt", b"a" * ((2 << 20) + 10), 413, "upload limit"),
    "dot-dot path": ("../escape.txt", "内容".encode(), 400, "contains a folder"),
    "absolute path": ("/etc/passwd.txt", "内容".encode(), 400, "absolute path"),
}


@pytest.mark.parametrize("case", BAD_FILES.values(), ids=list(BAD_FILES))
def test_bad_file_is_refused_and_kb_unchanged(kb_server, seeded_kb, case):
    filename, data, status, reason = case
    before = kb_state(kb_server, seeded_kb)
    response = upload(kb_server, seeded_kb, (filename, data))
    assert_error(response, status, "invalid_request_error", param="files")
    body = response.json()
    assert filename in body["error"]["message"] and reason in body["error"]["message"]
    [result] = body["results"]
    assert (result["filename"], result["status"]) == (filename, "rejected")
    assert result["error"] == ("too_large" if status == 413 else "invalid_input")
    assert kb_state(kb_server, seeded_kb) == before


def test_nul_in_file_name_is_refused(kb_server, seeded_kb):
    # httpx percent-escapes control characters in file names, so write the multipart body by hand
    body = (
        b'--xx\r\nContent-Disposition: form-data; name="files"; filename="a\x00b.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\n" + "内容".encode() + b"\r\n--xx--\r\n"
    )
    before = kb_state(kb_server, seeded_kb)
    response = httpx.post(
        f"{kb_server.base_url}/knowledge_bases/{seeded_kb}/documents",
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=xx"},
    )
    assert_error(response, 400, "invalid_request_error", "files_rejected")
    assert "NUL" in response.json()["error"]["message"]
    assert kb_state(kb_server, seeded_kb) == before


def test_every_file_rejected_names_each_one(kb_server, seeded_kb):
    response = upload(kb_server, seeded_kb, ("empty.txt", b""), ("tool.exe", b"MZ"))
    assert_error(response, 400, "invalid_request_error", "files_rejected")
    message = response.json()["error"]["message"]
    assert "empty.txt" in message and "tool.exe" in message
    assert [r["status"] for r in response.json()["results"]] == ["rejected", "rejected"]
    # one good file among bad ones: 200 with a result per file
    response = upload(kb_server, seeded_kb, ("empty.txt", b""), (FILLER[3][0], FILLER[3][1]))
    assert response.status_code == 200
    assert [r["status"] for r in response.json()["results"]] == ["rejected", "added"]


def test_too_many_files_and_no_files_are_400(kb_server, seeded_kb):
    response = upload(kb_server, seeded_kb, *[(f"f{i}.txt", b"x") for i in range(3)])
    assert_error(response, 400, "invalid_request_error", "too_many_files", "files")
    response = httpx.post(f"{kb_server.base_url}/knowledge_bases/{seeded_kb}/documents")
    assert_error(response, 400, "invalid_request_error")


@pytest.mark.parametrize("name", ["a/b", "..", "x" * 65, "../../etc"])
def test_bad_kb_names_are_400(kb_server, name):
    response = httpx.post(f"{kb_server.base_url}/knowledge_bases", json={"name": name})
    assert_error(response, 400, "invalid_request_error", "invalid_input")
    assert name not in [
        k["name"] for k in httpx.get(f"{kb_server.base_url}/knowledge_bases").json()["data"]
    ]


def test_unknown_kb_and_document_are_404(kb_server, seeded_kb):
    url = f"{kb_server.base_url}/knowledge_bases"
    for response in (
        httpx.get(f"{url}/nope"),
        httpx.get(f"{url}/nope/documents"),
        httpx.delete(f"{url}/nope"),
        upload(kb_server, "nope", FILLER[0]),
        search(kb_server, "nope", "问题"),
        httpx.delete(f"{url}/{seeded_kb}/documents/0123456789abcdef"),
    ):
        assert_error(response, 404, "not_found_error", "not_found")
    assert_error(httpx.get(f"{url}/{'x' * 65}/documents"), 400, "invalid_request_error")


@pytest.mark.parametrize("query", ["", "   "])
def test_empty_query_is_400(kb_server, seeded_kb, query):
    assert_error(search(kb_server, seeded_kb, query), 400, "invalid_request_error", "invalid_input")


def test_bad_search_bodies_are_400(kb_server, seeded_kb):
    url = f"{kb_server.base_url}/knowledge_bases/{seeded_kb}/search"
    assert_error(httpx.post(url, json={}), 400, "invalid_request_error", param="query")
    assert_error(search(kb_server, seeded_kb, "问题", top_k=0), 400, "invalid_request_error")


def test_two_uploads_at_once_both_land(kb_server):
    kb = new_kb(kb_server)
    barrier = threading.Barrier(2)
    responses: dict[str, httpx.Response] = {}

    def send(word: str) -> None:
        barrier.wait()
        responses[word] = upload(kb_server, kb, (f"{word}.txt", IDIOMS[word].encode()))

    threads = [threading.Thread(target=send, args=(w,)) for w in ("亡羊补牢", "掩耳盗铃")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {w: r.status_code for w, r in responses.items()} == {"亡羊补牢": 200, "掩耳盗铃": 200}
    _, docs = kb_state(kb_server, kb)
    assert sorted(d["filename"] for d in docs) == ["亡羊补牢.txt", "掩耳盗铃.txt"]
    for word in ("亡羊补牢", "掩耳盗铃"):
        assert search(kb_server, kb, word, top_k=1).json()["data"][0]["filename"] == f"{word}.txt"


def test_cli_and_api_share_knowledge_bases(kb_server, tmp_path, capsys):
    """`xiaophi-kb create/add/search` and the same through the API, on one folder."""
    kb_settings = kb_server.app.state.knowledge_bases.settings
    kb_dir = str(kb_settings.kb_dir)
    pdf = tmp_path / "some.pdf"
    pdf.write_bytes(make_pdf(["常见问题：" + IDIOMS["亡羊补牢"]]))
    notes = tmp_path / "notes_gbk.txt"
    notes.write_bytes(("问题与回答：" + IDIOMS["守株待兔"]).encode("gbk"))
    cli = ["--kb-dir", kb_dir, "--embedding-model", "hashing", "--backend", kb_settings.backend]
    if kb_settings.database_url:
        cli += ["--database-url", kb_settings.database_url.get_secret_value()]
    name = f"cli-{uuid.uuid4().hex[:6]}"
    for args in (["create", name], ["add", name, str(pdf), str(notes)]):
        assert kb_cli([*cli, *args]) in (0, None)
    capsys.readouterr()
    # the API sees what the CLI made …
    hits = search(kb_server, name, "问题").json()["data"]
    assert {h["filename"] for h in hits} == {"some.pdf", "notes_gbk.txt"}
    # … and the same steps through the API give the same documents
    api_kb = new_kb(kb_server)
    response = upload(
        kb_server, api_kb, ("some.pdf", pdf.read_bytes()), ("notes_gbk.txt", notes.read_bytes())
    )
    assert [r["status"] for r in response.json()["results"]] == ["added", "added"]
    assert response.json()["results"][0]["document"]["pages"] == 1
    api_hits = search(kb_server, api_kb, "问题").json()["data"]
    assert [(h["filename"], h["chunk_index"]) for h in api_hits] == [
        (h["filename"], h["chunk_index"]) for h in hits
    ]


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    """No model, no trained embedder, an API key, small body limits."""
    tmp = tmp_path_factory.mktemp("bare")
    settings = Settings(
        _env_file=None, model=None, api_keys=["k"], max_body_bytes=2048, max_upload_files=2
    )
    kb_settings = kb_test_settings(
        tmp / "kb",
        embedding_model=str(tmp / "runs" / "tiny" / "embedder"),
        max_upload_bytes=8192,
    )
    with run_server(settings, kb_settings=kb_settings) as running:
        yield running


AUTH = {"Authorization": "Bearer k"}


def test_kb_routes_need_the_api_key_and_no_model(bare_server):
    url = f"{bare_server.base_url}/knowledge_bases"
    assert_error(httpx.get(url), 401, "authentication_error")
    response = httpx.post(url, json={"name": "demo"}, headers=AUTH)
    assert response.status_code == 201  # no model loaded: knowledge bases still work
    assert httpx.get(f"{url}/demo/documents", headers=AUTH).json()["data"] == []


def test_missing_embedder_is_503_saying_how_to_fix(bare_server):
    url = f"{bare_server.base_url}/knowledge_bases"
    httpx.post(url, json={"name": "emb"}, headers=AUTH)
    for response in (
        httpx.post(f"{url}/emb/search", json={"query": "问题"}, headers=AUTH),
        httpx.post(
            f"{url}/emb/documents", files=[("files", ("a.txt", "内容".encode()))], headers=AUTH
        ),
    ):
        assert_error(response, 503, "service_unavailable_error", "embedder_unavailable")
        message = response.json()["error"]["message"]
        assert "xiaophi-train embedder" in message and "XIAOPHI_KB_EMBEDDING_MODEL" in message


def test_upload_route_has_its_own_body_limit(bare_server):
    url = f"{bare_server.base_url}/knowledge_bases"
    httpx.post(url, json={"name": "lim"}, headers=AUTH)

    def send(*files):
        return httpx.post(
            f"{url}/lim/documents",
            files=[("files", f) for f in files],
            headers=AUTH,
            timeout=30,
        )

    # over the global 2 KiB body limit but within the upload limit: the KB's loader answers
    response = send(("junk.txt", bytes(range(256)) * 24))
    assert_error(response, 400, "invalid_request_error", "files_rejected")
    assert "binary" in response.json()["error"]["message"]
    # over the KB's 8 KiB file limit: its own 413, naming the file and the setting
    response = send(("big.txt", b"a" * 9000))
    assert_error(response, 413, "invalid_request_error", "files_too_large")
    message = response.json()["error"]["message"]
    assert "big.txt" in message and "XIAOPHI_KB_MAX_UPLOAD_BYTES" in message
    # far over what any accepted upload can be: cut off before the body is read
    response = send(("huge.txt", b"a" * 200_000))
    assert_error(response, 413, "invalid_request_error", "request_too_large")
    assert "at most 2 files" in response.json()["error"]["message"]
    # other routes keep the global limit
    response = httpx.post(url, json={"name": "x" * 3000}, headers=AUTH)
    assert_error(response, 413, "invalid_request_error", "request_too_large")


def test_a_run_folder_checkpoint_uses_its_own_embedder(tiny_checkpoint, tmp_path, monkeypatch):
    """`xiaophi-serve --model /elsewhere/runs/x/dpo` started from any folder: uploads embed
    with `/elsewhere/runs/x/embedder`, not a `runs/tiny/embedder` relative to the cwd."""
    import shutil

    from rag.embeddings import embedder_id
    from tests.rag.conftest import save_static_embedder

    monkeypatch.delenv("XIAOPHI_KB_EMBEDDING_MODEL", raising=False)
    run = tmp_path / "elsewhere" / "runs" / "x"
    shutil.copytree(tiny_checkpoint, run / "dpo")
    save_static_embedder(run / "embedder")
    cwd = tmp_path / "somewhere-else"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    settings = tiny_settings(run / "dpo", kb_dir=tmp_path / "kb", ui=False)
    with run_server(settings) as server:
        kb = new_kb(server)
        assert (
            upload(server, kb, ("a.txt", "守株待兔比喻死守狭隘经验。".encode())).status_code == 200
        )
        info = httpx.get(f"{server.base_url}/knowledge_bases/{kb}").json()
    assert info["embedding_model"] == embedder_id(str(run / "embedder"))
