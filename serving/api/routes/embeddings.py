"""`POST /v1/embeddings` in OpenAI's schema, served by the knowledge-base embedder.

The embedder is the one the KB service indexes with (loaded on first use, see serving/knowledge.py),
so the vectors are those a KB stores: L2-normalised. It answers to its short name (a model
folder's name, a hub name, `hashing`, or the remote model id) and to the identity KBs record.
Embedding and token counting run in the thread pool. `usage` counts the embedder's tokens, or
characters for an embedder without a tokenizer (hashing, remote).
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import numpy as np
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from rag.embeddings import Embedder
from rag.errors import EmbedderUnavailable
from serving.api.deps import KBServiceDep
from serving.api.openapi import error_responses
from serving.errors import InvalidRequestError, ModelNotFoundError
from serving.schemas import (
    MAX_EMBEDDING_INPUT_CHARS,
    MAX_EMBEDDING_INPUTS,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
)

router = APIRouter(prefix="/v1", tags=["embeddings"])


@router.post("/embeddings", responses=error_responses(400, 404, 413, 503))
async def create_embeddings(body: EmbeddingRequest, kbs: KBServiceDep) -> EmbeddingList:
    texts = _texts(body.input)
    # the first request loads the model (seconds): not on the event loop
    embedder = await run_in_threadpool(lambda: kbs.embedder)
    if body.model not in (embedder.served_name, embedder.model_id):
        raise ModelNotFoundError(
            f"The model `{body.model}` does not exist; this server embeds with "
            f"`{embedder.served_name}`.",
            param="model",
            code="model_not_found",
        )
    if body.dimensions is not None:
        dim = await run_in_threadpool(lambda: embedder.dim)
        if body.dimensions != dim:
            raise InvalidRequestError(
                f"`dimensions`={body.dimensions}, but `{embedder.served_name}` makes "
                f"{dim}-dimensional vectors and cannot shorten them; send {dim} or leave it out.",
                param="dimensions",
                code="invalid_value",
            )
    vectors, tokens = await run_in_threadpool(_embed, embedder, texts)
    encode = _base64 if body.encoding_format == "base64" else list
    return EmbeddingList(
        data=[Embedding(index=i, embedding=encode(v)) for i, v in enumerate(vectors)],
        model=embedder.served_name,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )


def _texts(value: str | list) -> list[str]:
    """The request's texts, or a 400 saying what to change."""
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise InvalidRequestError(
            "`input` is an empty list; send a text or a list of texts.",
            param="input",
            code="empty_input",
        )
    if not all(isinstance(t, str) for t in texts):
        raise InvalidRequestError(
            "`input` holds token ids; this server embeds text only (ids of another tokenizer "
            "mean nothing to its embedder): send strings. With LangChain's OpenAIEmbeddings, "
            "pass check_embedding_ctx_length=False.",
            param="input",
            code="token_ids_not_supported",
        )
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequestError(
            f"`input` has {len(texts)} texts; send at most {MAX_EMBEDDING_INPUTS} per request.",
            param="input",
            code="too_many_inputs",
        )
    for i, text in enumerate(texts):
        where = "`input`" if isinstance(value, str) else f"`input[{i}]`"
        if not text:
            raise InvalidRequestError(
                f"{where} is an empty string; every text needs at least one character.",
                param="input",
                code="empty_input",
            )
        if len(text) > MAX_EMBEDDING_INPUT_CHARS:
            raise InvalidRequestError(
                f"{where} is {len(text)} characters long; send at most "
                f"{MAX_EMBEDDING_INPUT_CHARS} (split it, as a knowledge base splits documents).",
                param="input",
                code="input_too_long",
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape (`\ud800`) in the JSON
            raise InvalidRequestError(
                f"{where} is not valid Unicode (it holds a lone surrogate).",
                param="input",
                code="invalid_value",
            ) from None
    return texts


def _embed(embedder: Embedder, texts: list[str]) -> tuple[list[list[float]], int]:
    vectors = embedder.embeddings.embed_documents(texts)
    count = _token_counter(embedder)
    return vectors, sum(count(t) for t in texts)


def _token_counter(embedder: Embedder) -> Callable[[str], int]:
    try:
        return embedder.token_counter()
    except EmbedderUnavailable:  # no tokenizer here: characters are the honest count
        return len


def _base64(vector: list[float]) -> str:
    """OpenAI's `base64` encoding: the vector's little-endian float32 bytes."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
