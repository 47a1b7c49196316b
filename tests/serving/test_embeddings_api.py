"""`POST /v1/embeddings` through real HTTP: the official openai client (float, base64 and its
default), LangChain's OpenAIEmbeddings, the KB embedder's own vectors, keys, every refusal."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
from langchain_openai import OpenAIEmbeddings
from openai import OpenAI

from rag.config import KBSettings
from rag.embeddings import load_embedder
from serving.config import Settings
from tests.rag.conftest import IDIOMS
from tests.serving.conftest import free_port, run_server
from tests.serving.test_errors import assert_error

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXTS = [*IDIOMS.values(), "画蛇添足", "兔"]


def embedding_server(kb_dir, embedding_model: str, **kb_overrides):
    """A xiaophi server without a chat model whose KB embedder is `embedding_model`."""
    settings = Settings(_env_file=None, ui=False, api_keys=[KEY], kb_dir=kb_dir)
    kb_settings = KBSettings(kb_dir=kb_dir, embedding_model=embedding_model, **kb_overrides)
    return run_server(settings, kb_settings=kb_settings)


@pytest.fixture(scope="module")
def server(embedder_folder, tmp_path_factory):
    with embedding_server(tmp_path_factory.mktemp("kb_embed"), str(embedder_folder)) as running:
        yield running


@pytest.fixture(scope="module")
def local(embedder_folder):
    """The same embedder loaded in-process: what the KB stores."""
    return load_embedder(str(embedder_folder))


@pytest.fixture
def client(server) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=60)


def post(server, headers=AUTH, **body) -> httpx.Response:
    body.setdefault("model", "embedder")
    return httpx.post(f"{server.base_url}/embeddings", json=body, headers=headers, timeout=60)


def test_openai_client_gets_the_kb_vectors_as_floats(client, local):
    result = client.embeddings.create(model="embedder", input=TEXTS, encoding_format="float")
    assert result.object == "list" and result.model == "embedder"
    assert [d.index for d in result.data] == list(range(len(TEXTS)))
    assert all(d.object == "embedding" for d in result.data)
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape == (len(TEXTS), 16)
    assert np.allclose(vectors, local.embeddings.embed_documents(TEXTS), atol=1e-6)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # as the KB stores them
    count = local.token_counter()
    tokens = sum(count(t) for t in TEXTS)
    assert result.usage.prompt_tokens == result.usage.total_tokens == tokens


def test_base64_is_little_endian_float32(client, local):
    expected = np.array(local.embeddings.embed_documents(TEXTS[:2]), dtype=np.float32)
    result = client.embeddings.create(model="embedder", input=TEXTS[:2], encoding_format="base64")
    raw = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in result.data]
    assert np.array_equal(np.stack(raw), expected)
    # without encoding_format the client asks for base64 and decodes it itself
    result = client.embeddings.create(model="embedder", input=TEXTS[0])
    assert np.allclose(result.data[0].embedding, expected[0], atol=1e-7)


def test_langchain_openai_embeddings_work_against_the_endpoint(server, local):
    embeddings = OpenAIEmbeddings(
        model="embedder",
        base_url=server.base_url,
        api_key=KEY,
        check_embedding_ctx_length=False,  # send strings, not tiktoken ids
        tiktoken_enabled=False,
        chunk_size=2,
        max_retries=0,
    )
    vectors = embeddings.embed_documents(TEXTS)
    assert np.allclose(vectors, local.embeddings.embed_documents(TEXTS), atol=1e-6)
    assert np.allclose(embeddings.embed_query(TEXTS[1]), local.embeddings.embed_query(TEXTS[1]))


def test_the_model_answers_to_its_name_and_to_the_id_kbs_record(server, local):
    assert post(server, model=local.model_id, input="兔").json()["model"] == "embedder"
    assert post(server, input="兔", dimensions=16).status_code == 200


def test_refusals(server, client):
    with pytest.raises(openai.NotFoundError, match="embedder"):
        client.embeddings.create(model="text-embedding-3-small", input="兔")
    assert_error(
        post(server, model="tiny", input="兔"), 404, "not_found_error", "model_not_found", "model"
    )
    for empty in ([], "", ["兔", ""]):
        assert_error(post(server, input=empty), 400, "invalid_request_error", "empty_input")
    for ids in ([1, 2, 3], [[1, 2], [3]]):
        response = post(server, input=ids)
        assert_error(response, 400, "invalid_request_error", "token_ids_not_supported", "input")
        assert "check_embedding_ctx_length=False" in response.json()["error"]["message"]
    response = post(server, input=["兔"] * 2049)
    assert_error(response, 400, "invalid_request_error", "too_many_inputs")
    assert "2048" in response.json()["error"]["message"]
    response = post(server, input=["兔", "兔" * 8193])
    assert_error(response, 400, "invalid_request_error", "input_too_long")
    assert "input[1]" in response.json()["error"]["message"]
    response = post(server, input="兔", dimensions=8)
    assert_error(response, 400, "invalid_request_error", "invalid_value", "dimensions")
    assert "16" in response.json()["error"]["message"]
    assert_error(post(server, input="兔", encoding_format="int8"), 400, "invalid_request_error")
    # bigger than the server's body limit (1 MiB): cut off before it is read
    response = post(server, input=["画蛇添足比喻做了多余的事" * 600] * 60)
    assert_error(response, 413, "invalid_request_error", "request_too_large")


def test_api_keys_guard_it(server):
    assert_error(post(server, headers={}, input="兔"), 401, "authentication_error")
    wrong = {"Authorization": "Bearer nope"}
    assert_error(post(server, headers=wrong, input="兔"), 401, "authentication_error")


def test_a_missing_embedder_is_503_saying_how_to_fix_it(tmp_path):
    with embedding_server(tmp_path / "kb", str(tmp_path / "no-such-embedder")) as server:
        response = post(server, input="兔")
    assert_error(response, 503, "service_unavailable_error", "embedder_unavailable")
    assert "xiaophi-train embedder" in response.json()["error"]["message"]


def test_a_remote_embedder_that_is_down_is_503_naming_its_url(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with embedding_server(
        tmp_path / "kb", "embedder", embedding_url=dead, embedding_max_retries=0
    ) as server:
        response = post(server, input="兔")
        assert_error(response, 503, "service_unavailable_error", "embedder_unavailable")
        assert dead in response.json()["error"]["message"]
        # knowledge bases embed through it too: an upload says the same
        assert httpx.post(f"{server.base_url}/knowledge_bases", json={"name": "k"}, headers=AUTH)
        upload = httpx.post(
            f"{server.base_url}/knowledge_bases/k/documents",
            files=[("files", ("a.txt", IDIOMS["守株待兔"].encode()))],
            headers=AUTH,
            timeout=60,
        )
    assert_error(upload, 503, "service_unavailable_error", "embedder_unavailable")
    assert dead in upload.json()["error"]["message"]
