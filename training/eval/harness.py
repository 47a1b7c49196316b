"""`xiaophi-train eval`: a checkpoint through lm-evaluation-harness (its HF model backend).

The local tasks (`xiaophi_*`, YAML in training/eval/tasks/, shipped with the package) read the
demo's held-out data; any other task name goes to lm-eval's own registry unchanged (for example
`ceval-valid` or `cmmlu`, for users who have those datasets).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from pathlib import Path

TASKS_DIR = Path(__file__).parent / "tasks"
LOCAL_PREFIX = "xiaophi"
#: Task name → (the metric reported first, the metrics reported).
LOCAL_TASKS = {
    "xiaophi_heldout_bpc": ["bits_per_char"],
    "xiaophi_idiom_mc": ["acc"],
    "xiaophi_word_mc": ["acc"],
    "xiaophi_xiehouyu_mc": ["acc"],
    "xiaophi_idiom_cloze": ["acc", "acc_norm"],
    "xiaophi_word_cloze": ["acc", "acc_norm"],
    "xiaophi_xiehouyu_cloze": ["acc", "acc_norm"],
    "xiaophi_idiom_chat_cloze": ["acc", "acc_norm"],
    "xiaophi_idiom_grounded_cloze": ["acc", "acc_norm"],
    "xiaophi_idiom_gen": ["char_f1", "loop_rate", "stop_rate"],
    "xiaophi_idiom_grounded_gen": ["char_f1", "loop_rate", "stop_rate"],
}
#: Tool use, asked for by name or as the group `xiaophi_tools` (not part of `xiaophi`: a prompt
#: that lists tools must fit the model's context, which the tiny recipe's 256 positions do not).
TOOLS_GROUP = "xiaophi_tools"
TOOL_TASKS = {
    "xiaophi_idiom_tool_call": ["valid_call", "exact_args"],
    "xiaophi_idiom_no_tool": ["no_call"],
    "xiaophi_idiom_tool_answer_gen": ["char_f1", "loop_rate", "stop_rate"],
}
LIKELIHOOD_TASKS = [t for t in LOCAL_TASKS if not t.endswith("_gen")]
GENERATION_TASKS = [t for t in LOCAL_TASKS if t.endswith("_gen")] + list(TOOL_TASKS)


@functools.cache
def _hflm_class():
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM

    from training.eval.tasks.tasks import LIMIT_MARK, STOPPED_MARK

    class XiaophiLM(HFLM):
        """lm-eval's HF model, with two changes for small Chinese BPE models:

        - context and continuation are encoded separately: with a pre-tokenizer that glues
          punctuation to the letters after it, encoding them together would move the boundary
          and score part of the prompt as part of the answer;
        - every generated answer ends with a mark saying whether the model stopped on its own
          (an end token among its tokens) or hit the token limit; the local generation tasks
          read and strip it.
        """

        def __init__(self, *args, mark_stops: bool = True, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            ids = self.model.generation_config.eos_token_id
            ids = ids if isinstance(ids, list) else [ids]
            self._end_ids = {i for i in [*ids, self.tokenizer.eos_token_id] if i is not None}
            self._mark_stops = mark_stops

        def _encode_pair(self, context: str, continuation: str):
            return self.tok_encode(context), self.tok_encode(continuation)

        def tok_decode(self, tokens, skip_special_tokens: bool = True):
            text = super().tok_decode(tokens, skip_special_tokens=skip_special_tokens)
            if self._mark_stops and skip_special_tokens and isinstance(tokens, list):
                stopped = any(t in self._end_ids for t in tokens)
                text += STOPPED_MARK if stopped else LIMIT_MARK
            return text

    with contextlib.suppress(AssertionError, ValueError):  # registered by an earlier call
        register_model("xiaophi-hf")(XiaophiLM)
    return XiaophiLM


@functools.cache
def completions_class():
    """lm-eval's `local-completions` model with XiaophiLM's encoding (context and answer apart),
    registered as `xiaophi-completions`."""
    from lm_eval.api.registry import register_model
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    class XiaophiCompletions(LocalCompletionsAPI):
        def _encode_pair(self, context: str, continuation: str):
            return self.tok_encode(context), self.tok_encode(continuation)

    with contextlib.suppress(AssertionError, ValueError):  # registered by an earlier call
        register_model("xiaophi-completions")(XiaophiCompletions)
    return XiaophiCompletions


def lm_class():
    return _hflm_class()


def _local_tasks(tasks: list[str]) -> tuple[list[str], list[str]]:
    """`tasks` split into the packaged xiaophi tasks (`xiaophi` = all) and lm-eval's own."""
    local = [t for t in tasks if t.startswith(LOCAL_PREFIX)]
    groups = {LOCAL_PREFIX: list(LOCAL_TASKS), TOOLS_GROUP: list(TOOL_TASKS)}
    unknown = [t for t in local if t not in LOCAL_TASKS and t not in TOOL_TASKS and t not in groups]
    if unknown:
        raise ValueError(
            f"unknown local task(s) {', '.join(unknown)}; the xiaophi tasks are "
            f"{', '.join([*LOCAL_TASKS, *TOOL_TASKS])} (or `xiaophi` for all but the tool tasks, "
            f"`{TOOLS_GROUP}` for those)"
        )
    local = list(dict.fromkeys(name for t in local for name in groups.get(t, [t])))
    return local, [t for t in tasks if not t.startswith(LOCAL_PREFIX)]


def _run_tasks(
    local_lm, standard_lm, local: list[str], standard: list[str], tokenizer_path, data: dict
) -> dict:
    """The packaged tasks on `local_lm()` and lm-eval's own on `standard_lm()`, each model built
    only when its tasks are asked for (the one path of `evaluate` and `evaluate_server`)."""
    import lm_eval

    results: dict = {}
    if local:
        results.update(_run_local(local_lm(), local, tokenizer_path, **data))
    if standard:
        out = lm_eval.simple_evaluate(model=standard_lm(), tasks=standard, bootstrap_iters=1000)
        results.update(_scores(out, [k for k in out["results"]]))
    return results


def _run_local(lm, local: list[str], tokenizer_path, heldout, eval_text, **options) -> dict:
    """lm-eval on the packaged tasks, which get the held-out files through the task metadata."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    if heldout is None or eval_text is None:
        raise ValueError("the xiaophi tasks need the held-out files: pass heldout and eval_text")
    meta = {
        "heldout": str(heldout),
        "eval_text": str(eval_text),
        "tokenizer": str(tokenizer_path),
        "split": options["split"],
        "limit": options["limit"] or 0,
        "bpc_max_chars": options["bpc_max_chars"] or 0,
    }
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=local,
        task_manager=TaskManager(
            include_path=str(TASKS_DIR), include_defaults=False, metadata=meta
        ),
        gen_kwargs={"max_gen_toks": options["max_new_tokens"]},
        bootstrap_iters=1,  # > 0 turns on the closed-form standard error of means
        log_samples=False,
    )
    return _scores(out, local)


def evaluate(
    model,
    tokenizer_path: str | Path,
    tasks: list[str],
    heldout: str | Path | None = None,
    eval_text: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    bpc_max_chars: int | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    device: str | None = None,
    max_length: int | None = None,
) -> dict:
    """Scores of `model` (a checkpoint folder or a loaded PreTrainedModel) on `tasks`.

    Returns {task: {metric: value, metric + "_ci95": half-width of the 95% interval, "n": items}},
    plus "wall_time_s". Local tasks get the held-out files through lm-eval's task metadata.
    `max_length` caps the tokens the model sees at once (bits/char windows); by default the
    model's context.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    if isinstance(model, (str, Path)):
        model = AutoModelForCausalLM.from_pretrained(str(model))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    hf = dict(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        device=device,
        max_length=max_length,
    )

    def plain_hf():
        from lm_eval.models.huggingface import HFLM

        return HFLM(**hf)

    data = dict(
        heldout=heldout,
        eval_text=eval_text,
        split=split,
        limit=limit,
        bpc_max_chars=bpc_max_chars,
        max_new_tokens=max_new_tokens,
    )
    results = _run_tasks(
        lambda: lm_class()(**hf), plain_hf, *_local_tasks(tasks), tokenizer_path, data
    )
    results["wall_time_s"] = round(time.time() - started, 2)
    return results


def _served_cards(base_url: str) -> list[dict]:
    import httpx

    try:
        response = httpx.get(f"{base_url.rstrip('/')}/models", timeout=30)
        response.raise_for_status()
        return response.json().get("data", [])
    except (httpx.HTTPError, ValueError) as exc:
        raise ValueError(f"could not list the models at {base_url}/models: {exc}") from exc


def first_served_model(base_url: str) -> str:
    """The first model id the server lists (the chat model, on xiaophi-serve)."""
    cards = _served_cards(base_url)
    if not cards:
        raise ValueError(f"{base_url}/models lists no model")
    return cards[0]["id"]


def served_context(base_url: str, model: str) -> int:
    """The context length an OpenAI-compatible server lists for `model` (`max_model_len`, as
    xiaophi-serve and vLLM list it on /v1/models)."""
    cards = _served_cards(base_url)
    for card in cards:
        if card.get("id") == model and card.get("max_model_len"):
            return int(card["max_model_len"])
    raise ValueError(
        f"{base_url}/models lists no max_model_len for `{model}` "
        f"(models: {', '.join(c.get('id', '?') for c in cards) or 'none'}); pass --max-length"
    )


def evaluate_server(
    base_url: str,
    model: str,
    tokenizer_path: str | Path,
    tasks: list[str],
    heldout: str | Path | None = None,
    eval_text: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    bpc_max_chars: int | None = None,
    num_concurrent: int = 4,
    max_length: int | None = None,
) -> dict:
    """Scores of a model behind an OpenAI-compatible server (`base_url` ends in /v1: xiaophi-serve,
    vLLM, …) on the likelihood tasks, through `/v1/completions` with echo and logprobs — lm-eval's
    `local-completions`, encoding context and answer as `evaluate` does, so a served checkpoint
    scores what it scores in process. Each scored text plus the one token the API generates must
    fit the served context (`max_length`, by default the server's `max_model_len`): the bits/char
    windows are 2 tokens shorter than `evaluate`'s at the same `max_length`."""
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    started = time.time()
    asked = [t for t in tasks if t in GENERATION_TASKS or t == TOOLS_GROUP]
    if asked:  # by name; the `xiaophi` group over HTTP means its likelihood tasks
        raise ValueError(
            f"{', '.join(asked)} over HTTP is not supported (the answers need the model's "
            "end tokens to mark a stop); evaluate the checkpoint folder for them"
        )
    local, standard = _local_tasks(tasks)
    local = [t for t in local if t not in GENERATION_TASKS]
    api = dict(
        base_url=f"{base_url.rstrip('/')}/completions",
        model=model,
        tokenizer_backend="huggingface",
        tokenizer=str(tokenizer_path),
        num_concurrent=num_concurrent,
        max_length=max_length or served_context(base_url, model),
        max_retries=1,
    )

    def plain_api():
        from lm_eval.models.openai_completions import LocalCompletionsAPI

        return LocalCompletionsAPI(**api)

    data = dict(
        heldout=heldout,
        eval_text=eval_text,
        split=split,
        limit=limit,
        bpc_max_chars=bpc_max_chars,
        max_new_tokens=1,
    )
    results = _run_tasks(
        lambda: completions_class()(**api), plain_api, local, standard, tokenizer_path, data
    )
    results["wall_time_s"] = round(time.time() - started, 2)
    return results


def _scores(out: dict, tasks: list[str]) -> dict:
    scores = {}
    for task in tasks:
        raw = out["results"].get(task)
        if raw is None:
            continue
        row = {"n": out.get("n-samples", {}).get(task, {}).get("effective")}
        for key, value in raw.items():
            if "," not in key or not isinstance(value, (int, float)):
                continue
            metric, _, _filter = key.partition(",")
            if metric.endswith("_stderr"):
                base = metric[: -len("_stderr")]
                row[base + "_ci95"] = None if math.isnan(value) else round(1.96 * value, 4)
            else:
                row[metric] = round(float(value), 4)
        scores[task] = row
    return scores


def format_table(columns: dict[str, dict], tasks: list[str] | None = None) -> str:
    """One row per task metric, one column per evaluated model, each cell `value ± ci95`."""
    names = list(columns)
    known = [*LOCAL_TASKS, *TOOL_TASKS]
    tasks = tasks or [t for t in known if any(t in c for c in columns.values())]
    header = f"{'task':<30}{'metric':<14}" + "".join(f"{n:>20}" for n in names)
    lines = [header, "-" * len(header)]
    for task in tasks:
        metrics = (
            LOCAL_TASKS.get(task)
            or TOOL_TASKS.get(task)
            or sorted(
                {m for c in columns.values() for m in c.get(task, {}) if not m.endswith("_ci95")}
                - {"n"}
            )
        )
        for metric in metrics:
            cells = []
            for name in names:
                row = columns[name].get(task, {})
                value, ci = row.get(metric), row.get(metric + "_ci95")
                if value is None:
                    cells.append(f"{'–':>20}")
                elif ci is None:
                    cells.append(f"{value:>20.3f}")
                else:
                    cells.append(f"{f'{value:.3f} ± {ci:.3f}':>20}")
            n = next((columns[m].get(task, {}).get("n") for m in names), None)
            label = task.removeprefix("xiaophi_") + (f" (n={n})" if n else "")
            lines.append(f"{label:<30}{metric:<14}" + "".join(cells))
    return "\n".join(lines)
