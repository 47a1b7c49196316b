"""With API keys configured, nothing but /health answers without one: every route the app has,
the docs and the mounted page (gradio's own routes, its upload among them) included."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute, Mount, Route, compile_path

from tests.serving.conftest import RunningServer, kb_test_settings, run_server, tiny_settings

KEYS = ["k1", "k2"]
RIGHT = {"Authorization": "Bearer k2"}
WRONG = {"Authorization": "Bearer k3"}
OPEN = {"/health"}
MARKER = b"xiaophi-auth-test: this must not reach the disk without a key"

# Plausible values for the routes' path parameters (any other gets "1").
PARAMS = {
    "kb": "demo",
    "doc_id": "doc-1",
    "model_id": "tiny",
    "path": "index.html",
    "path_or_url": "index.html",
    "url_path": "x",
    "session_hash": "abc",
    "event_id": "abc",
    "api_name": "on_chat",
    "ext": "ts",
    "size": "192",
}
PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


@pytest.fixture(scope="module")
def upload_dir(tmp_path_factory) -> Iterator[Path]:
    """gradio's upload folder for this module's server (GRADIO_TEMP_DIR), empty at first."""
    folder = tmp_path_factory.mktemp("gradio_uploads")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def locked(tiny_checkpoint, tmp_path_factory, upload_dir) -> Iterator[RunningServer]:
    """The server as users start it (the page mounted at /ui), with two API keys."""
    kb_dir = tmp_path_factory.mktemp("auth") / "kb"
    settings = tiny_settings(tiny_checkpoint, kb_dir=kb_dir, api_keys=KEYS, ui=True)
    with run_server(settings, kb_settings=kb_test_settings(kb_dir)) as running:
        yield running


def gradio_app(server: RunningServer):
    (mount,) = [r for r in server.app.routes if isinstance(r, Mount) and r.path == "/ui"]
    return mount.app


def concrete(path: str) -> str:
    return PARAM.sub(lambda m: PARAMS.get(m.group(1), "1"), path)


def walk(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) for every route, into included routers and mounted apps, path
    parameters filled in."""
    for context in iter_route_contexts(routes):
        route = context.original_route
        if isinstance(route, Mount):
            inner = list(walk(route.routes, prefix + context.path))
            yield from inner or [("GET", prefix + context.path + "/")]
        elif isinstance(route, (Route, APIRoute)):
            path = concrete(context.path)
            regex, _, _ = compile_path(context.path)
            assert regex.match(path), (context.path, path)  # it reaches this route
            for method in sorted(context.methods or {"GET"}):
                yield method, prefix + path
        else:  # a websocket or another kind of route: give it a check of its own here
            pytest.fail(f"route of an unchecked kind: {route!r}")


def sweep(server: RunningServer) -> list[tuple[str, str]]:
    routes = sorted(set(walk(server.app.routes)))
    paths = {path for _, path in routes}
    # the walk reaches the API, the docs and gradio's routes, its upload among them
    assert {"/v1/chat/completions", "/openapi.json", "/docs", "/redoc"} <= paths
    assert {"/ui/", "/ui/config", "/ui/gradio_api/upload", "/ui/gradio_api/queue/join"} <= paths
    assert len(routes) > 60
    return routes


def status(client: httpx.Client, method: str, path: str, headers: dict) -> httpx.Response:
    """The answer's status and headers (an event stream is not read to its end)."""
    with client.stream(method, path, headers=headers) as response:
        if response.status_code == 401 and method != "HEAD":
            response.read()
        return response


def assert_refused(response: httpx.Response, method: str, code: str) -> None:
    where = f"{method} {response.request.url.path}"
    assert response.status_code == 401, f"{where}: {response.status_code}"
    assert response.headers.get("www-authenticate") == "Bearer", where
    if method != "HEAD":
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, where
        assert (error["type"], error["code"]) == ("authentication_error", code), where


def test_every_route_but_health_needs_a_valid_key(locked):
    routes = sweep(locked)
    with httpx.Client(base_url=locked.url, timeout=30) as client:
        for method, path in routes:
            if path in OPEN:
                assert status(client, method, path, {}).status_code == 200
                continue
            assert_refused(status(client, method, path, {}), method, "missing_api_key")
            assert_refused(status(client, method, path, WRONG), method, "invalid_api_key")
            basic = {"Authorization": "Basic azI6"}
            assert_refused(status(client, method, path, basic), method, "invalid_api_key")
        for method, path in routes:
            response = status(client, method, path, RIGHT)
            assert response.status_code != 401, f"{method} {path} refused the right key"


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_gradio_upload_without_a_key_is_401_and_writes_nothing(locked, upload_dir):
    assert Path(gradio_app(locked).uploaded_file_dir) == upload_dir
    url = f"{locked.url}/ui/gradio_api/upload"
    upload = {"files": ("a.txt", MARKER)}
    assert_refused(httpx.post(url, files=upload), "POST", "missing_api_key")
    assert_refused(httpx.post(url, files=upload, headers=WRONG), "POST", "invalid_api_key")
    stale = {"Cookie": "xiaophi_session=made-up"}
    assert_refused(httpx.post(url, files=upload, headers=stale), "POST", "missing_api_key")
    # refused before the body is read: a big one is 401 too, not 413
    big = {"files": ("big.txt", MARKER * 200_000)}
    assert_refused(httpx.post(url, files=big), "POST", "missing_api_key")
    assert files_in(upload_dir) == []

    # the same upload with the key does write (so the check above can see a write)
    response = httpx.post(url, files=upload, headers=RIGHT)
    assert response.status_code == 200, response.text
    (written,) = response.json()
    assert Path(written).read_bytes() == MARKER and upload_dir in Path(written).parents


def operations(schema: dict) -> Iterator[tuple[str, dict]]:
    for path, methods in schema["paths"].items():
        for operation in methods.values():
            yield path, operation


def test_openapi_requires_the_bearer_key_only_when_keys_are_configured(server, locked):
    open_schema = httpx.get(f"{server.url}/openapi.json").json()
    assert "securitySchemes" not in open_schema.get("components", {})
    assert all("security" not in op for _, op in operations(open_schema))

    assert httpx.get(f"{locked.url}/openapi.json").status_code == 401
    schema = httpx.get(f"{locked.url}/openapi.json", headers=RIGHT).json()
    ((name, scheme),) = schema["components"]["securitySchemes"].items()
    assert scheme == {"type": "http", "scheme": "bearer"}
    seen = set()
    for path, operation in operations(schema):
        seen.add(path)
        if path in OPEN:
            assert "security" not in operation
        else:
            assert operation["security"] == [{name: []}], path
    assert "/health" in seen and "/v1/chat/completions" in seen


def login(server: RunningServer, key: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/ui/login", data={"key": key}, **kwargs)


def test_the_page_asks_a_browser_for_the_key_once(locked):
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    form = httpx.get(f"{locked.url}/ui/", headers=browser)
    assert form.status_code == 401 and form.headers["www-authenticate"] == "Bearer"
    assert 'action="/ui/login"' in form.text and 'name="key"' in form.text
    assert "gradio" not in form.text.lower()  # the page itself is not sent

    wrong = login(locked, "k3", headers=browser)
    assert wrong.status_code == 401 and "不正确" in wrong.text
    assert "set-cookie" not in wrong.headers
    assert_refused(login(locked, "k3"), "POST", "invalid_api_key")
    assert_refused(login(locked, ""), "POST", "missing_api_key")

    opened = login(locked, "k1")
    assert opened.status_code == 303 and opened.headers["location"] == "/ui/"
    cookie = opened.headers["set-cookie"].lower()
    assert "httponly" in cookie and "path=/ui" in cookie and "samesite=lax" in cookie
    assert "k1" not in opened.headers["set-cookie"]  # a token, not the key
    with httpx.Client(base_url=locked.url, cookies=opened.cookies, timeout=30) as session:
        page = session.get("/ui/")
        assert page.status_code == 200 and "小Phi" in page.text
        assert session.get("/ui/config").status_code == 200
        assert session.post("/ui/gradio_api/upload", files={"files": ("b.txt", b"x")}).is_success
        # the session is the page's: the API and the docs still want the header
        assert_refused(session.get("/v1/models"), "GET", "missing_api_key")
        assert_refused(session.get("/openapi.json"), "GET", "missing_api_key")
        # a wrong header is not rescued by the session
        assert_refused(session.get("/ui/config", headers=WRONG), "GET", "invalid_api_key")

        assert session.get("/ui/logout").status_code == 303
        assert_refused(
            httpx.get(f"{locked.url}/ui/config", cookies=opened.cookies),
            "GET",
            "missing_api_key",
        )
