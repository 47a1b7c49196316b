"""`/v1/tools`: the dictionary tools this server runs (serving/dictionary_tools.py) — their
schemas, to pass as `tools` in a chat request, and a call of one, as a client runs the
`tool_calls` a model made (the page's "使用工具" does)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from serving.api.openapi import error_responses
from serving.dictionary_tools import BadArguments, DictionaryTools, UnknownTool
from serving.errors import InvalidRequestError, ToolNotFoundError

router = APIRouter(prefix="/v1/tools", tags=["tools"])


class ToolList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]


class ToolRun(BaseModel):
    arguments: dict[str, Any] | str = Field(
        description="The call's arguments: an object, or the JSON text a model's tool call holds."
    )


class ToolResult(BaseModel):
    object: Literal["tool.result"] = "tool.result"
    name: str
    content: str = Field(description="What to send back to the model as the `tool` message.")


def _tools(request: Request) -> DictionaryTools:
    return request.app.state.dictionary_tools


@router.get("")
async def list_tools(request: Request) -> ToolList:
    return ToolList(data=_tools(request).schemas())


@router.post("/{name}", responses=error_responses(400, 404))
async def run_tool(
    name: Annotated[str, Path(description="The tool's name, as in the model's call.")],
    body: ToolRun,
    request: Request,
) -> ToolResult:
    try:
        content = await run_in_threadpool(_tools(request).run, name, body.arguments)
    except UnknownTool as exc:
        raise ToolNotFoundError(exc.args[0], param="name", code="tool_not_found") from exc
    except BadArguments as exc:
        raise InvalidRequestError(str(exc), param="arguments") from exc
    return ToolResult(name=name, content=content)
