"""User data in the documented formats, checked before any long work starts.

Formats (one record per row):

- ``text`` (pretraining): ``.txt`` with one document per non-empty line, or ``.jsonl`` /
  ``.json`` / ``.parquet`` rows with a non-empty string field ``text``.
- ``sft``: rows with ``messages`` (a list of ``{"role": system|user|assistant, "content": str}``
  with at least one assistant turn), or with ``prompt`` + ``completion`` strings; optionally
  ``documents`` (a list of ``{"title": str, "text": str}``) that the chat template renders
  (transformers' ``apply_chat_template(..., documents=...)``). Tool use as OpenAI writes it:
  ``tools`` on the row, assistant turns with ``tool_calls`` (content may then be null), ``tool``
  turns with the results (checked and normalised in tool_format.py).
- ``dpo``: rows with ``prompt``, ``chosen``, ``rejected``; each a string or a list of messages.

``check_files`` streams every row once and raises :class:`DataError` naming the file, the row
(for jsonl/txt the 1-based line number) and the field, and saying what to fix. The loaders
check first, then load with ``datasets.load_dataset`` and convert to one canonical shape:
SFT becomes a ``messages`` column; DPO becomes trl's conversational
``prompt`` / ``chosen`` / ``rejected`` lists of messages.

Kept as one module: the checks and the loaders are two readings of one documented format; apart,
a format change could reach one and not the other.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import pyarrow as pa

from training.data.tool_format import (
    describe as _describe,
    normal_tool_call,
    tool_calls_problem,
    tool_names,
    tools_json,
    tools_problem,
)

KINDS = ("text", "sft", "dpo")
EXTENSIONS = (".txt", ".jsonl", ".json", ".parquet")
ROLES = ("system", "user", "assistant")
PARQUET_BATCH_ROWS = 4096

MESSAGE_FEATURE = {"role": datasets.Value("string"), "content": datasets.Value("string")}
DOCUMENT_FEATURE = {"title": datasets.Value("string"), "text": datasets.Value("string")}
SFT_FEATURES = datasets.Features({"messages": datasets.List(MESSAGE_FEATURE)})
# with documents in any row: trl passes `chat_template_kwargs` to apply_chat_template per row
SFT_DOCUMENT_FEATURES = datasets.Features(
    {
        "messages": datasets.List(MESSAGE_FEATURE),
        "chat_template_kwargs": {"documents": datasets.List(DOCUMENT_FEATURE)},
    }
)
# with tool use in any row: calls on assistant turns, `tools` as one JSON string per row
TOOL_CALL_FEATURE = {
    "type": datasets.Value("string"),
    "function": {"name": datasets.Value("string"), "arguments": datasets.Value("string")},
}
TOOL_MESSAGE_FEATURE = {**MESSAGE_FEATURE, "tool_calls": datasets.List(TOOL_CALL_FEATURE)}
DPO_FEATURES = datasets.Features(
    {name: datasets.List(MESSAGE_FEATURE) for name in ("prompt", "chosen", "rejected")}
)

PathsLike = str | Path | Sequence[str | Path]
Row = dict[str, Any]


class DataError(ValueError):
    """A data file that cannot be used as given; the message says where and what to fix."""

    def __init__(
        self, path: str | Path, problem: str, row: int | None = None, field: str | None = None
    ) -> None:
        self.path = str(path)
        self.row = row
        self.field = field
        self.problem = problem
        where = self.path
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field `{field}`"
        super().__init__(f"{where}: {problem}")


# --------------------------------------------------------------------------------------------
# Row schemas. Each validator returns None when the row is fine, else (field, problem-and-fix).
# --------------------------------------------------------------------------------------------

RowProblem = tuple[str, str] | None


def _message_list_problem(
    value: Any, field: str, need_assistant: bool, tools: set[str] | None = None
) -> RowProblem:
    """`tools` (the row's declared tool names, possibly none) allows tool use: `tool_calls` on
    assistant turns and `tool` turns after them; None refuses both (DPO)."""
    if not isinstance(value, list) or not value:
        return field, (
            'must be a non-empty list of {"role": ..., "content": ...} objects; '
            f"got {_describe(value)}"
        )
    roles = ROLES if tools is None else (*ROLES, "tool")
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            return (
                where,
                f'must be an object {{"role": ..., "content": ...}}; got {_describe(message)}',
            )
        role = message.get("role")
        if role not in roles:
            return f"{where}.role", f"must be one of {', '.join(roles)}; got {_describe(role)}"
        calls = message.get("tool_calls")
        if calls is not None:
            if tools is None or role != "assistant":
                return f"{where}.tool_calls", (
                    "only an assistant turn of an SFT row can carry tool calls"
                )
            if problem := tool_calls_problem(calls, where, tools):
                return problem
        if role == "tool":
            before = value[i - 1] if i else {}
            if not (before.get("role") == "tool" or before.get("tool_calls")):
                return f"{where}.role", (
                    "a `tool` turn (a call's result) must follow an assistant turn with "
                    "`tool_calls` or another `tool` turn"
                )
        content = message.get("content")
        if not isinstance(content, str) and not (calls and content is None):
            return f"{where}.content", f"must be a string; got {_describe(content)}"
    if need_assistant and not any(m["role"] == "assistant" for m in value):
        return field, "has no assistant turn; add at least one message with role `assistant`"
    return None


def _text_row_problem(row: Row) -> RowProblem:
    text = row.get("text")
    if "text" not in row:
        return "text", 'is missing; every row needs {"text": "..."}'
    if not isinstance(text, str):
        return "text", f"must be a string; got {_describe(text)}"
    if not text.strip():
        return "text", "is empty; remove the row or give it text"
    return None


def _documents_problem(value: Any) -> RowProblem:
    if not isinstance(value, list):
        return (
            "documents",
            f'must be a list of {{"title": ..., "text": ...}}; got {_describe(value)}',
        )
    for i, doc in enumerate(value):
        if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
            return f"documents[{i}]", 'must be an object with a string "text" (and "title")'
        if not isinstance(doc.get("title", ""), str):
            return f"documents[{i}].title", f"must be a string; got {_describe(doc['title'])}"
    return None


def _sft_row_problem(row: Row) -> RowProblem:
    if row.get("documents") is not None and (problem := _documents_problem(row["documents"])):
        return problem
    if row.get("tools") is not None and (problem := tools_problem(row["tools"])):
        return problem
    if row.get("messages") is not None:
        return _message_list_problem(
            row["messages"], "messages", need_assistant=True, tools=tool_names(row.get("tools"))
        )
    if "prompt" in row or "completion" in row:
        for name in ("prompt", "completion"):
            if name not in row:
                return (
                    name,
                    "is missing; a prompt/completion row needs both `prompt` and `completion`",
                )
            if not isinstance(row[name], str):
                return name, f"must be a string; got {_describe(row[name])}"
        if not row["completion"].strip():
            return "completion", "is empty; give the answer the model should learn"
        return None
    return "messages", (
        "is missing; give `messages` (a list of role/content turns) "
        "or `prompt` and `completion` strings"
    )


def _dpo_field_problem(row: Row, name: str) -> RowProblem:
    if name not in row or row[name] is None:
        return name, "is missing; a DPO row needs `prompt`, `chosen` and `rejected`"
    value = row[name]
    if isinstance(value, str):
        if name != "prompt" and not value.strip():
            return name, "is empty; give the answer text"
        return None
    if not isinstance(value, list):
        return name, f"must be a string or a list of messages; got {_describe(value)}"
    problem = _message_list_problem(value, name, need_assistant=False)
    if problem:
        return problem
    last = "user" if name == "prompt" else "assistant"
    if value[-1]["role"] != last:
        return f"{name}[{len(value) - 1}].role", f"the last message must have role `{last}`"
    return None


def _dpo_row_problem(row: Row) -> RowProblem:
    for name in ("prompt", "chosen", "rejected"):
        problem = _dpo_field_problem(row, name)
        if problem:
            return problem
    return None


ROW_CHECKS: dict[str, Callable[[Row], RowProblem]] = {
    "text": _text_row_problem,
    "sft": _sft_row_problem,
    "dpo": _dpo_row_problem,
}


# --------------------------------------------------------------------------------------------
# Streaming readers: yield (row number, row) for every record of a file.
# --------------------------------------------------------------------------------------------


def _iter_txt_rows(path: Path) -> Iterator[tuple[int, Row]]:
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise DataError(
                    path,
                    f"is not valid UTF-8 ({err.reason}); re-save the file as UTF-8",
                    row=line_no,
                ) from err
            if text.strip():
                yield line_no, {"text": text}


def _iter_jsonl_rows(path: Path) -> Iterator[tuple[int, Row]]:
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except UnicodeDecodeError as err:
                raise DataError(
                    path, "is not valid UTF-8; re-save the file as UTF-8", row=line_no
                ) from err
            except json.JSONDecodeError as err:
                raise DataError(
                    path,
                    f"invalid JSON ({err.msg} at column {err.colno}); each line must be one JSON object",
                    row=line_no,
                ) from err
            yield line_no, row


def _json_starts_with_array(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _iter_json_rows(path: Path) -> Iterator[tuple[int, Row]]:
    """A `.json` file is either one JSON array of objects or JSON Lines."""
    if not _json_starts_with_array(path):
        yield from _iter_jsonl_rows(path)
        return
    try:
        items = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(
            path, f"invalid JSON ({err}); the file must be one JSON array of objects or JSON Lines"
        ) from err
    yield from enumerate(items, start=1)


def _iter_parquet_rows(path: Path) -> Iterator[tuple[int, Row]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, f"is not a readable parquet file ({err})") from err
    row_no = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            row_no += 1
            yield row_no, row


READERS: dict[str, Callable[[Path], Iterator[tuple[int, Row]]]] = {
    ".txt": _iter_txt_rows,
    ".jsonl": _iter_jsonl_rows,
    ".json": _iter_json_rows,
    ".parquet": _iter_parquet_rows,
}


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _as_paths(paths: PathsLike) -> list[Path]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return [Path(p) for p in paths]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r}; use one of {', '.join(KINDS)}")


def _check_file_exists(path: Path, kind: str) -> None:
    """Cheap checks for one file: present, a file, non-empty, a supported extension."""
    if not path.exists():
        raise DataError(
            path, "file not found; check the path (relative paths start at the current directory)"
        )
    if not path.is_file():
        raise DataError(path, "is not a file; list the data files themselves, not a folder")
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise DataError(
            path,
            f"unsupported extension {suffix or '(none)'!r}; use one of {', '.join(EXTENSIONS)}",
        )
    if suffix == ".txt" and kind != "text":
        raise DataError(
            path,
            f"plain .txt holds pretraining text only; give {kind} data as .jsonl, .json or .parquet",
        )
    if path.stat().st_size == 0:
        raise DataError(path, "is empty; add records or remove it from the list")


class CheckedFile(NamedTuple):
    records: int
    has_documents: bool  # an sft row carries `documents`
    has_tools: bool  # an sft row carries `tools`, `tool_calls` or a `tool` turn


#: Files checked in this process, by (path, kind, size, mtime): a pipeline checks every file
#: before long work starts and its stages load them again; while a file is unchanged the second
#: look costs nothing.
_CHECKED: dict[tuple[str, str, int, int], CheckedFile] = {}


def _check_rows(path: Path, kind: str) -> CheckedFile:
    """Validate every row of one file in a single streaming pass (once per unchanged file)."""
    stat = path.stat()
    key = (str(path.resolve()), kind, stat.st_size, stat.st_mtime_ns)
    if key in _CHECKED:
        return _CHECKED[key]
    check = ROW_CHECKS[kind]
    count, documents, tools = 0, False, False
    for row_no, row in READERS[path.suffix.lower()](path):
        if not isinstance(row, dict):
            raise DataError(path, f"must be a JSON object; got {_describe(row)}", row=row_no)
        problem = check(row)
        if problem:
            field, message = problem
            raise DataError(path, message, row=row_no, field=field)
        count += 1
        documents = documents or bool(row.get("documents"))
        tools = tools or _uses_tools(row)
    if count == 0:
        raise DataError(path, "has no records (only blank lines); add records or remove the file")
    _CHECKED[key] = CheckedFile(count, documents, tools)
    return _CHECKED[key]


def check_files(paths: PathsLike, kind: str) -> dict[str, int]:
    """Fail fast on unusable data: every file exists and every row matches `kind`'s schema.

    Returns the number of records per file. Raises DataError at the first problem.
    """
    _check_kind(kind)
    files = _as_paths(paths)
    if not files:
        raise DataError("(no files)", f"no {kind} data files were given; pass at least one path")
    for path in files:
        _check_file_exists(path, kind)
    return {str(path): _check_rows(path, kind).records for path in files}


# --------------------------------------------------------------------------------------------
# Streaming and loading
# --------------------------------------------------------------------------------------------


def iter_texts(paths: PathsLike) -> Iterator[str]:
    """Stream the documents of txt/jsonl/json/parquet files (checked first)."""
    files = _as_paths(paths)
    check_files(files, "text")
    for path in files:
        if path.suffix.lower() == ".parquet":
            yield from _iter_parquet_texts(path)
            continue
        for _, row in READERS[path.suffix.lower()](path):
            yield row["text"]


def _iter_parquet_texts(path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=["text"]):
        yield from batch.column(0).to_pylist()


def _builder_for(path: Path) -> str:
    return {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}[
        path.suffix.lower()
    ]


def _load_file(path: Path) -> datasets.Dataset:
    """One file as a Dataset, read by `datasets.load_dataset`."""
    return datasets.load_dataset(_builder_for(path), data_files=str(path), split="train")


def _load_converted(
    path: Path,
    convert: Callable[[Row], Row],
    features: datasets.Features,
    records: int,
    rows: list[int] | None = None,
) -> datasets.Dataset:
    """One sft/dpo file (of `records` checked rows) converted row by row to `features`; only
    `rows` (indices, in that order) when given.

    pyarrow infers one type per column; when a field is a string in some rows and a list in
    others it cannot, and we build the Dataset from our own (already checked) rows instead.
    """
    try:
        ds = _load_file(path)
        if len(ds) != records:  # the rows would not line up with `rows`: read them ourselves
            raise pa.ArrowInvalid(f"{len(ds)} rows read, {records} checked")
    except (datasets.exceptions.DatasetGenerationError, pa.ArrowInvalid, pa.ArrowTypeError):
        all_rows = [row for _, row in READERS[path.suffix.lower()](path)]
        picked = all_rows if rows is None else [all_rows[i] for i in rows]
        return datasets.Dataset.from_list([convert(row) for row in picked], features=features)
    if rows is not None:
        ds = ds.select(rows)
    return ds.map(convert, remove_columns=ds.column_names, features=features)


def load_text_dataset(paths: PathsLike, num_proc: int = 1) -> datasets.Dataset:
    """Pretraining documents as a Dataset with one column, `text` (blank txt lines dropped)."""
    files = _as_paths(paths)
    check_files(files, "text")
    parts = []
    for path in files:
        ds = _load_file(path).select_columns(["text"])
        if path.suffix.lower() == ".txt":
            ds = ds.filter(
                _has_text,
                batched=True,
                num_proc=num_proc if len(ds) > 50_000 and num_proc > 1 else None,
            )
        parts.append(ds)
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _has_text(batch: dict[str, list]) -> list[bool]:
    return [bool(t and t.strip()) for t in batch["text"]]


def _user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def _assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def _clean_messages(messages: Iterable[dict]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _uses_tools(row: Row) -> bool:
    messages = row.get("messages") or []
    return bool(row.get("tools")) or any(
        isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool") for m in messages
    )


def _tool_messages(messages: Iterable[dict]) -> list[dict]:
    """Messages with their tool calls normalised (None where a turn has none)."""
    return [
        {
            "role": m["role"],
            "content": m.get("content") or "",
            "tool_calls": [normal_tool_call(c) for c in m["tool_calls"]]
            if m.get("tool_calls")
            else None,
        }
        for m in messages
    ]


def sft_messages(row: Row, tools: bool = False) -> list[dict]:
    """A checked SFT row as messages; prompt+completion becomes [user, assistant] verbatim.
    With `tools`, every message carries `tool_calls` (None on turns without calls)."""
    if row.get("messages") is not None:
        return _tool_messages(row["messages"]) if tools else _clean_messages(row["messages"])
    messages = [_user(row["prompt"]), _assistant(row["completion"])]
    return _tool_messages(messages) if tools else messages


def dpo_record(row: Row) -> dict[str, list[dict[str, str]]]:
    """A checked DPO row in trl's conversational form; strings become one-message lists."""
    out = {}
    for name in ("prompt", "chosen", "rejected"):
        value = row[name]
        if isinstance(value, str):
            out[name] = [_user(value)] if name == "prompt" else [_assistant(value)]
        else:
            out[name] = _clean_messages(value)
    return out


def load_sft_dataset(
    paths: PathsLike, sample: int = 0, seed: int = 0, repeats: Sequence[int] = ()
) -> datasets.Dataset:
    """SFT conversations as a Dataset with one column, `messages` (plus `chat_template_kwargs`
    when any row has documents, and `tools` when any row uses tools).

    `sample` > 0 keeps that many conversations, exactly those (in that order) that
    `.shuffle(seed=seed).select(range(sample))` of the whole dataset would keep — only they are
    converted. `repeats` (one per file) counts each file's conversations that many times, as if
    the file were listed that often, before the draw.
    """
    files = _as_paths(paths)
    counts = check_files(files, "sft")
    if repeats and (len(repeats) != len(files) or min(repeats) < 1):
        raise ValueError(f"repeats {list(repeats)} needs one whole number >= 1 per file")
    if repeats and max(repeats) > 1:
        counts = {k: n * r for (k, n), r in zip(counts.items(), repeats, strict=True)}
    checked = [_check_rows(path, "sft") for path in files]
    documents = any(c.has_documents for c in checked)
    if any(c.has_tools for c in checked):
        convert = _sft_tool_document_record if documents else _sft_tool_record
        features = sft_tool_features(documents)
    elif documents:
        convert, features = _sft_document_record, SFT_DOCUMENT_FEATURES
    else:
        convert, features = _sft_record, SFT_FEATURES
    total = sum(counts.values())
    picked = _shuffled_indices(total, seed)[:sample] if 0 < sample < total else None
    parts, offset = [], 0
    for path, repeat in zip(files, repeats or [1] * len(files), strict=True):
        size = counts[str(path)]
        records = size // repeat
        rows = None
        if picked is not None:
            rows = [(i - offset) % records for i in picked if offset <= i < offset + size]
        elif repeat > 1:
            rows = list(range(records)) * repeat
        parts.append(_load_converted(path, convert, features, records, rows))
        offset += size
    dataset = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if picked is not None and len(parts) > 1:
        # each file's picks are in draw order; put the files' picks back into one draw order
        grouped = sorted(range(len(picked)), key=lambda k: (_file_of(picked[k], counts), k))
        position = {k: at for at, k in enumerate(grouped)}
        dataset = dataset.select([position[k] for k in range(len(picked))])
    return dataset


def _shuffled_indices(total: int, seed: int) -> list[int]:
    """The row order `Dataset.shuffle(seed=seed)` gives a dataset of `total` rows."""
    return datasets.Dataset.from_dict({"i": list(range(total))}).shuffle(seed=seed)["i"]


def _file_of(index: int, counts: dict[str, int]) -> int:
    for n, records in enumerate(counts.values()):
        if index < records:
            return n
        index -= records
    raise IndexError(index)


def iter_sft_conversations(paths: PathsLike) -> Iterator[Row]:
    """Every checked SFT row as the chat template takes it — ``messages`` (tool calls
    normalised in a row that uses tools), ``tools`` (a list, empty without), ``documents`` —
    plus ``uses_tools``, in file order, without building a Dataset (for reading a few
    conversations out of many, or rendering them)."""
    files = _as_paths(paths)
    check_files(files, "sft")
    for path in files:
        for _, row in READERS[path.suffix.lower()](path):
            uses_tools = _uses_tools(row)
            tools = tools_json(row.get("tools"))
            yield {
                "messages": sft_messages(row, tools=uses_tools),
                "tools": json.loads(tools) if tools else [],
                "documents": _documents(row),
                "uses_tools": uses_tools,
            }


def _sft_record(row: Row) -> Row:
    return {"messages": sft_messages(row)}


def _documents(row: Row) -> list[dict[str, str]]:
    return [{"title": d.get("title") or "", "text": d["text"]} for d in row.get("documents") or []]


def _sft_document_record(row: Row) -> Row:
    return {"messages": sft_messages(row), "chat_template_kwargs": {"documents": _documents(row)}}


def sft_tool_features(documents: bool) -> datasets.Features:
    """Conversations with tool use: calls on assistant turns, `tools` as one JSON string."""
    features = {
        "messages": datasets.List(TOOL_MESSAGE_FEATURE),
        "tools": datasets.Value("string"),
    }
    if documents:
        features["chat_template_kwargs"] = {"documents": datasets.List(DOCUMENT_FEATURE)}
    return datasets.Features(features)


def _sft_tool_record(row: Row) -> Row:
    return {"messages": sft_messages(row, tools=True), "tools": tools_json(row.get("tools"))}


def _sft_tool_document_record(row: Row) -> Row:
    return {**_sft_tool_record(row), "chat_template_kwargs": {"documents": _documents(row)}}


def load_dpo_dataset(paths: PathsLike) -> datasets.Dataset:
    """Preference pairs as a Dataset with `prompt` (ending in a user turn), `chosen`, `rejected`."""
    files = _as_paths(paths)
    counts = check_files(files, "dpo")
    parts = [_load_converted(path, dpo_record, DPO_FEATURES, counts[str(path)]) for path in files]
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
