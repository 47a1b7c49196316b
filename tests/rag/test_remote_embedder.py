"""Knowledge bases embedding through an OpenAI-compatible server: a second, real xiaophi
serving its KB embedder at `/v1/embeddings`. Same vectors and searches as in-process, batches
of `embedding_batch_size`, the embedder recorded so that switching needs a reindex, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from openai import OpenAI
from pydantic import ValidationError

from rag.config import KBSettings
from rag.embeddings import embedder_for, load_embedder
from rag.errors import Conflict, EmbedderUnavailable
from rag.models import Upload
from rag.service import KnowledgeBaseService
from serving.app import create_app
from serving.config import Settings
from tests.rag.conftest import IDIOMS
from tests.serving.conftest import free_port, serve

KEY = "embed-key"
QUERIES = ["守株待兔是什么意思", "做了多余的事", "出了问题以后补救", "自己欺骗自己"]
#: statuses the remote answers with before it embeds again (see RequestLog)
REFUSE: list[int] = []


class RequestLog:
    """ASGI middleware keeping the JSON body of every POST to /v1/embeddings (real traffic);
    while `refuse` holds statuses, each request is answered with the next one instead."""

    def __init__(self, app, seen: list, refuse: list) -> None:
        self.app, self.seen, self.refuse = app, seen, refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith("/embeddings"):
            await self.app(scope, receive, send)
            return
        if self.refuse:
            status = self.refuse.pop(0)
            self.seen.append(status)
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        chunks = []

        async def logged():
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                self.seen.append(json.loads(b"".join(chunks) or b"{}"))
            return message

        await self.app(scope, logged, send)


@pytest.fixture(scope="module")
def remote(embedder_folder, tmp_path_factory):
    """A xiaophi server (no chat model, API keys on) serving `embedder_folder`; its request log."""
    kb_dir = tmp_path_factory.mktemp("remote_kb")
    app = create_app(
        Settings(_env_file=None, ui=False, api_keys=[KEY], kb_dir=kb_dir),
        kb_settings=KBSettings(kb_dir=kb_dir, embedding_model=str(embedder_folder)),
    )
    seen: list[dict | int] = []
    app.add_middleware(RequestLog, seen=seen, refuse=REFUSE)
    with serve(app) as url:
        yield f"{url}/v1", seen


def remote_settings(tmp_path, url, **overrides) -> KBSettings:
    values = dict(
        kb_dir=tmp_path / "kb_remote",
        embedding_model="embedder",
        embedding_url=url,
        embedding_api_key=KEY,
        chunk_size=60,
        chunk_overlap=10,
    )
    return KBSettings(**{**values, **overrides})


def local_settings(tmp_path, folder, **overrides) -> KBSettings:
    values = dict(kb_dir=tmp_path / "kb_local", embedding_model=str(folder), chunk_size=60)
    return KBSettings(**{**values, "chunk_overlap": 10, **overrides})


def idiom_uploads() -> list[Upload]:
    return [Upload(filename=f"{name}.txt", data=text.encode()) for name, text in IDIOMS.items()]


def test_remote_vectors_equal_the_in_process_ones_in_batches(remote, embedder_folder, tmp_path):
    url, seen = remote
    embedder = embedder_for(remote_settings(tmp_path, url, embedding_batch_size=3))
    assert embedder.model_id == f"remote:{url}#embedder" and embedder.served_name == "embedder"
    local = load_embedder(str(embedder_folder))
    texts = [*IDIOMS.values(), "画蛇添足", "兔", "亡羊补牢，犹未为晚。"]
    del seen[:]
    vectors = embedder.embeddings.embed_documents(texts)
    assert np.allclose(vectors, local.embeddings.embed_documents(texts), atol=1e-6)
    assert [len(body["input"]) for body in seen] == [3, 3, 1]  # embedding_batch_size
    assert all(body["model"] == "embedder" and isinstance(body["input"][0], str) for body in seen)
    query = embedder.embeddings.embed_query(QUERIES[0])
    assert np.allclose(query, local.embeddings.embed_query(QUERIES[0]), atol=1e-6)
    assert embedder.dim == 16


def test_busy_or_failing_remotes_are_retried(remote, embedder_folder, tmp_path):
    url, seen = remote
    expected = load_embedder(str(embedder_folder)).embeddings.embed_query("兔")
    del seen[:]
    REFUSE[:] = [429, 503]
    embedder = embedder_for(remote_settings(tmp_path, url, embedding_max_retries=2))
    assert np.allclose(embedder.embeddings.embed_query("兔"), expected, atol=1e-6)
    assert seen[:2] == [429, 503] and len(seen) == 3
    REFUSE[:] = [502]
    embedder = embedder_for(remote_settings(tmp_path, url, embedding_max_retries=0))
    with pytest.raises(EmbedderUnavailable, match="answered 502") as caught:
        embedder.embeddings.embed_query("兔")
    assert (
        url in caught.value.message and "XIAOPHI_KB_EMBEDDING_MAX_RETRIES" in caught.value.message
    )


def test_a_kb_built_remotely_searches_like_one_built_in_process(remote, embedder_folder, tmp_path):
    url, _ = remote
    services = {
        "remote": KnowledgeBaseService(remote_settings(tmp_path, url)),
        "local": KnowledgeBaseService(local_settings(tmp_path, embedder_folder)),
    }
    for service in services.values():
        service.create_kb("idioms")
        results = service.add_documents("idioms", idiom_uploads()).results
        assert [r.status for r in results] == ["added"] * len(IDIOMS)
    assert services["remote"].get_kb("idioms").embedding_model == f"remote:{url}#embedder"
    for query in QUERIES:
        for mode in ("dense", "hybrid"):
            hits = {
                where: service.search("idioms", query, top_k=3, mode=mode)
                for where, service in services.items()
            }
            assert [h.chunk_id for h in hits["remote"]] == [h.chunk_id for h in hits["local"]]
            assert np.allclose(
                [h.score for h in hits["remote"]], [h.score for h in hits["local"]], atol=1e-5
            )


def test_switching_between_remote_and_in_process_needs_a_reindex(remote, embedder_folder, tmp_path):
    url, _ = remote
    kb_settings = remote_settings(tmp_path, url)
    built = KnowledgeBaseService(kb_settings)
    built.create_kb("idioms")
    built.add_documents("idioms", idiom_uploads())
    # the same vectors, but another embedder as far as the KB can tell
    in_process = KnowledgeBaseService(
        local_settings(tmp_path, embedder_folder, kb_dir=kb_settings.kb_dir)
    )
    with pytest.raises(Conflict, match="reindex"):
        in_process.search("idioms", QUERIES[0])
    in_process.reindex("idioms")
    assert in_process.get_kb("idioms").embedding_model.startswith(str(embedder_folder.resolve()))
    assert in_process.search("idioms", QUERIES[0], top_k=1)
    with pytest.raises(Conflict, match="XIAOPHI_KB_EMBEDDING_URL"):
        KnowledgeBaseService(kb_settings).search("idioms", QUERIES[0])


def test_a_xiaophi_serves_the_remote_embedder_it_uses(remote, embedder_folder, tmp_path):
    """Server B embeds through server A; B's own `/v1/embeddings` passes A's vectors on."""
    url, _ = remote
    kb_settings = remote_settings(tmp_path, url)
    settings = Settings(_env_file=None, ui=False, api_keys=[], kb_dir=kb_settings.kb_dir)
    with serve(create_app(settings, kb_settings=kb_settings)) as b_url:
        client = OpenAI(base_url=f"{b_url}/v1", api_key="unused", max_retries=0)
        result = client.embeddings.create(model="embedder", input=QUERIES)
    expected = load_embedder(str(embedder_folder)).embeddings.embed_documents(QUERIES)
    assert result.model == "embedder"
    assert np.allclose([d.embedding for d in result.data], expected, atol=1e-6)
    # no tokenizer on B's side: usage counts characters
    assert result.usage.prompt_tokens == sum(len(q) for q in QUERIES)


def test_errors_name_the_url_and_the_setting_to_fix(remote, tmp_path):
    url, _ = remote
    dead = f"http://127.0.0.1:{free_port()}/v1"
    down = KnowledgeBaseService(remote_settings(tmp_path, dead, embedding_max_retries=0))
    down.create_kb("idioms")
    with pytest.raises(EmbedderUnavailable, match="cannot reach") as caught:
        down.add_documents("idioms", idiom_uploads())
    assert dead in caught.value.message and "XIAOPHI_KB_EMBEDDING_URL" in caught.value.message
    assert down.get_kb("idioms").documents == 0  # nothing half-added

    cases = {
        "XIAOPHI_KB_EMBEDDING_API_KEY": dict(embedding_api_key=None),
        "XIAOPHI_KB_EMBEDDING_MODEL='bge-small-zh'": dict(embedding_model="bge-small-zh"),
        "ends in /v1": dict(embedding_url=url.removesuffix("/v1")),
    }
    for hint, overrides in cases.items():
        embedder = embedder_for(remote_settings(tmp_path, url, **overrides))
        with pytest.raises(EmbedderUnavailable) as caught:
            embedder.embeddings.embed_query("兔")
        assert hint in caught.value.message
        assert overrides.get("embedding_url", url) in caught.value.message


def test_remote_settings(monkeypatch):
    monkeypatch.delenv("XIAOPHI_KB_EMBEDDING_MODEL", raising=False)  # demo/cli.py sets it
    with pytest.raises(ValidationError, match="XIAOPHI_KB_EMBEDDING_MODEL"):
        KBSettings(embedding_url="http://host:8000/v1")  # which model would it ask for?
    with pytest.raises(ValidationError, match="http"):
        KBSettings(embedding_url="host:8000/v1", embedding_model="m")
    full = KBSettings(embedding_url="http://host:8000/v1/embeddings/", embedding_model="m")
    assert full.embedding_url == "http://host:8000/v1"
    assert KBSettings(embedding_url="").embedding_url is None  # compose's `${VAR:-}`
    key = KBSettings(embedding_url="http://h/v1", embedding_model="m", embedding_api_key="s3")
    assert "s3" not in repr(key)
