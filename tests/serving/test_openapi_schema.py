"""The OpenAPI document describes the server as it behaves: schemathesis sends generated
requests (valid and invalid) to a real uvicorn with the tiny model and checks every answer
against `/openapi.json` — statuses, bodies, headers — and that nothing is a server error."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import checks
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks

from tests.serving.conftest import kb_test_settings, run_server, tiny_settings

CHECKS = [
    checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.negative_data_rejection,
]
EXAMPLES = 60  # per operation and mode; derandomized, so every run sends the same requests


def exercise(operation, mode: GenerationMode, base_url: str, failures: dict[str, str]) -> None:
    """Send EXAMPLES generated requests to one operation; keep the first failure, if any."""
    label = f"{mode.value} {operation.label}"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def send(case) -> None:
        if label in failures:
            return
        try:
            case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=60)
        except (Exception, FailureGroup) as exc:  # every failure is reported at the end
            failures[label] = str(exc)[:1500]

    try:
        send()
    except Unsatisfiable:  # nothing to make invalid (an operation without parameters)
        assert mode is GenerationMode.NEGATIVE, label


@pytest.mark.slow
def test_every_operation_answers_as_documented(tiny_checkpoint, tmp_path):
    kb_dir = tmp_path / "kb"
    server_settings = tiny_settings(tiny_checkpoint, kb_dir=kb_dir, ui=False)
    with run_server(server_settings, kb_settings=kb_test_settings(kb_dir)) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 10
        failures: dict[str, str] = {}
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                exercise(operation, mode, server.url, failures)
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def test_the_document_names_the_real_error_model_and_content_types():
    from serving.app import create_app
    from serving.config import Settings

    document = create_app(Settings(_env_file=None, ui=False)).openapi()
    operations = [
        (path, method, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, method, operation in operations:
        responses = operation["responses"]
        assert "422" not in responses, path
        assert "security" not in operation, path  # no keys configured: none asked for
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]["$ref"]
                assert schema.rsplit("/", 1)[1] in ("ErrorResponse", "UploadRejected"), path
        if method == "post":
            assert {"400", "413"} <= set(responses), path
    assert list(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == [
        "text/plain; version=1.0.0; charset=utf-8"
    ]
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"application/json", "text/event-stream"} <= set(chat["200"]["content"])
    assert {"400", "404", "413", "429", "503"} <= set(chat)
    kb_name = document["paths"]["/v1/knowledge_bases/{kb}"]["get"]["parameters"][0]["schema"]
    assert kb_name["maxLength"] == 64 and kb_name["pattern"].startswith("^")
