"""xiaophi-serve serves the page at /ui; the stand-alone CLI's flags; how the page finds its API."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from serving.api.page import local_api_url, mount
from serving.config import Settings
from tests.serving.conftest import serve
from tests.ui.conftest import call_page
from ui.cli import parse_args


def test_page_is_served_at_ui(ui_server):
    page = httpx.get(f"{ui_server.url}/ui/", timeout=30)
    assert page.status_code == 200 and "小Phi" in page.text
    config = httpx.get(f"{ui_server.url}/ui/config", timeout=30).json()
    assert config["analytics_enabled"] is False
    # the API is untouched by the mount
    assert httpx.get(f"{ui_server.url}/v1/models", timeout=30).json()["data"][0]["id"] == "tiny"


def test_page_can_be_switched_off(keyed_server):
    key = {"Authorization": "Bearer secret"}
    assert httpx.get(f"{keyed_server.url}/ui/", headers=key, timeout=30).status_code == 404
    # and without the key, nothing tells whether it is there
    assert httpx.get(f"{keyed_server.url}/ui/", timeout=30).status_code == 401


def test_local_api_url():
    assert local_api_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert local_api_url("127.0.0.1", 9) == "http://127.0.0.1:9"
    assert local_api_url("::", 80) == "http://127.0.0.1:80"
    assert local_api_url("::1", 80) == "http://[::1]:80"


def test_cli_flags():
    args = parse_args(["--api", "http://host:8000", "--api-key", "k", "--port", "7861"])
    assert (args.api, args.api_key, args.port, args.host) == (
        "http://host:8000",
        "k",
        7861,
        "127.0.0.1",
    )


def test_the_page_opens_on_the_default_knowledge_base_when_it_exists(
    keyed_ui_server, ui_server, monkeypatch
):
    monkeypatch.setenv("XIAOPHI_UI_DEFAULT_KB", "demo")  # what `make demo` sets
    assert Settings(_env_file=None).ui_default_kb == "demo"

    # xiaophi-serve's page, with `ui_default_kb="demo"` and a `demo` knowledge base
    key = {"Authorization": f"Bearer {keyed_ui_server.keys[0]}"}
    with httpx.Client(base_url=keyed_ui_server.server.url, headers=key, timeout=60) as client:
        picker, status = call_page(client, "on_load", [])
    assert picker["value"] == ["demo"] and ["demo", "demo"] in picker["choices"]
    assert "1 个知识库" in status

    # a default that does not exist: the page opens with none picked
    page = mount(FastAPI(), ui_server.url, default_kb="no-such-kb")
    with serve(page) as url, httpx.Client(base_url=url, timeout=60) as client:
        picker, _ = call_page(client, "on_load", [])
    assert picker["value"] == []
