"""`/v1/tools`: the dictionary tools a server runs from its tools file, through a real server;
calls with bad arguments or to unknown tools get OpenAI-style errors; a bad file stops the
server at start with a message that names it."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from serving.dictionary_tools import DictionaryTools, ToolsFileError
from tests.serving.conftest import run_server, tiny_settings
from tests.serving.test_errors import assert_error

LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup_idiom",
        "description": "查成语词典，得到成语的解释",
        "parameters": {
            "type": "object",
            "properties": {"term": {"type": "string", "description": "成语"}},
            "required": ["term"],
        },
    },
}
FILE = {
    "not_found": "没有找到“{term}”。",
    "tools": [{"tool": LOOKUP, "entries": {"守株待兔": "守株待兔：比喻死守狭隘经验，不知变通。"}}],
}


@pytest.fixture(scope="module")
def tools_server(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("tools") / "tools.json"
    path.write_text(json.dumps(FILE, ensure_ascii=False), encoding="utf-8")
    with run_server(tiny_settings(tiny_checkpoint, tools_file=path, ui=False)) as running:
        yield running


def test_the_server_lists_its_tools_and_runs_them(tools_server):
    url = f"{tools_server.base_url}/tools"
    assert httpx.get(url).json() == {"object": "list", "data": [LOOKUP]}
    found = httpx.post(f"{url}/lookup_idiom", json={"arguments": {"term": "守株待兔"}})
    assert found.status_code == 200
    assert found.json() == {
        "object": "tool.result",
        "name": "lookup_idiom",
        "content": "守株待兔：比喻死守狭隘经验，不知变通。",
    }
    # the arguments as a model's call holds them: JSON text
    missing = httpx.post(f"{url}/lookup_idiom", json={"arguments": '{"term": "兔待株守"}'})
    assert missing.json()["content"] == "没有找到“兔待株守”。"


@pytest.mark.parametrize(
    "name, body, status, param",
    [
        ("lookup_word", {"arguments": {"term": "天气"}}, 404, "name"),
        ("lookup_idiom", {"arguments": "{term: 守株待兔}"}, 400, "arguments"),
        ("lookup_idiom", {"arguments": {"word": "守株待兔"}}, 400, "arguments"),
        ("lookup_idiom", {"arguments": {"term": 3}}, 400, "arguments"),
        ("lookup_idiom", {}, 400, None),
    ],
)
def test_bad_calls_get_openai_errors_that_say_what_to_fix(tools_server, name, body, status, param):
    response = httpx.post(f"{tools_server.base_url}/tools/{name}", json=body)
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    assert_error(response, status, kind, param=param)
    if status == 404:
        assert "lookup_idiom" in response.json()["error"]["message"]  # what it does run


def test_without_a_tools_file_there_are_none(server):
    assert httpx.get(f"{server.base_url}/tools").json() == {"object": "list", "data": []}
    response = httpx.post(f"{server.base_url}/tools/lookup_idiom", json={"arguments": {}})
    assert_error(response, 404, "not_found_error", code="tool_not_found")


@pytest.mark.parametrize(
    "content, says",
    [
        ("{not json", "not readable JSON"),
        ('{"tools": {}}', '"tools" list'),
        ('{"tools": [{"tool": {"type": "function", "function": {"name": "x"}}}]}', "entries"),
        (
            json.dumps(
                {
                    "tools": [
                        {
                            "tool": {
                                **LOOKUP,
                                "function": {
                                    **LOOKUP["function"],
                                    "parameters": {"type": "object", "properties": {}},
                                },
                            },
                            "entries": {},
                        }
                    ]
                }
            ),
            "exactly one required argument",
        ),
        (json.dumps({"tools": [FILE["tools"][0]] * 2}), "listed twice"),
        (json.dumps({**FILE, "not_found": "没有"}), "{term}"),
    ],
)
def test_a_bad_tools_file_is_refused_naming_the_file(tmp_path, content, says):
    path = tmp_path / "tools.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ToolsFileError, match=str(path)) as caught:
        DictionaryTools.load(path)
    assert says in str(caught.value)


def test_xiaophi_serve_stops_at_start_on_a_bad_tools_file(tmp_path, tiny_checkpoint):
    path = tmp_path / "tools.json"
    path.write_text('{"tools": 1}', encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving",
            "--model",
            str(tiny_checkpoint),
            "--tools-file",
            str(path),
            "--port",
            "9",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert f"xiaophi-serve: tools file {path}" in done.stderr and "Traceback" not in done.stderr


def test_an_empty_tools_file_setting_means_no_tools(monkeypatch):
    from serving.config import Settings

    monkeypatch.setenv("XIAOPHI_TOOLS_FILE", "")
    assert Settings(_env_file=None).tools_file is None
