"""Import boundaries: the default engine stays clear of transformers' private
continuous-batching modules; the error types and the middleware stay clear of the service."""

from __future__ import annotations

import json
import subprocess
import sys

PRIVATE = "transformers.generation.continuous_batching"


def modules_after(imports: str, prefix: str) -> list[str]:
    """The modules starting with `prefix` that a fresh interpreter holds after `imports`."""
    code = (
        f"import json, sys\n{imports}\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefix!r}))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(result.stdout)


def test_the_default_engine_does_not_import_transformers_continuous_batching():
    # a fresh interpreter: this test process may have imported the hf-continuous engine already
    imports = "import serving.app, serving.engine.engine_process, serving.engine.slot_batching"
    assert modules_after(imports, PRIVATE) == []


def test_the_hf_continuous_engine_does_import_it():
    """The check above can fail: the other engine's module pulls the private modules in."""
    assert modules_after("import serving.engine.hf_continuous", PRIVATE) != []


def test_errors_and_middleware_do_not_import_the_service():
    imports = "import serving.errors, serving.api.auth, serving.api.body_limit"
    assert modules_after(imports, "serving.service") == []


def test_the_request_schemas_do_not_import_the_kb_service_or_langchain():
    """serving/schemas.py reads the query limit from rag.models, not from the KB service."""
    assert modules_after("import serving.schemas", "rag.service") == []
    assert modules_after("import serving.schemas", "langchain") == []
