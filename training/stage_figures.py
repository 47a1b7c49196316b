"""The figures a person reads on the console: one line per finished stage, read from the report
the stage returned (the same dict its `stage_report.json` holds), and the pipeline's ending (the
eval table, the chat model's answers to held-out questions, where the summary and logs are).

A report that lacks a figure (an older run folder, a stage run with other options) just gives a
shorter line: nothing here may fail a finished stage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from training.progress import NAME_WIDTH


def duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:,.0f} s"


def number(value: float) -> str:
    """A figure with as many digits as a person needs: 8,100 · 61 · 4.2 · 0.93."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def perplexity(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2f}"


def rate(tokens_per_s: float) -> str:
    return (
        f"{tokens_per_s / 1000:.1f}k tokens/s"
        if tokens_per_s >= 1000
        else f"{tokens_per_s:.0f} tokens/s"
    )


def _loss(r: dict, first: str = "train_loss_first", last: str = "train_loss_last") -> str:
    return f"loss {number(r[first])} → {number(r[last])}"


def _steps(r: dict) -> str:
    return f"{r['steps']:,} steps"


def _pretrain_steps(r: dict) -> str:
    stopped_by = r.get("stopped_by", "max_steps")
    if stopped_by == "max_steps":
        return _steps(r)
    return f"{r['steps']:,} of {r['max_steps']:,} steps (stopped by the {stopped_by})"


def _tokens(r: dict) -> str:
    return rate(r["tokens_per_s"])


def _resumed(r: dict) -> str:
    return "resumed from its last checkpoint" if r["resumed"] else ""


def _tokenizer(r: dict) -> list:
    return [
        lambda: f"vocabulary {r['vocab_size']:,}",
        lambda: f"{r['chars_per_token_heldout']:.2f} characters per token on held-out text",
    ]


def _pretrain(r: dict) -> list:
    return [
        lambda: _pretrain_steps(r),
        lambda: _loss(r),
        lambda: (
            f"held-out perplexity {perplexity(r['perplexity'])} "
            f"(untrained {perplexity(r['perplexity_untrained'])})"
        ),
        lambda: _tokens(r),
        lambda: _resumed(r),
    ]


def _sft(r: dict) -> list:
    return [
        lambda: _steps(r),
        lambda: _loss(r),
        lambda: f"held-out loss {number(r['eval_loss_before'])} → {number(r['eval_loss'])}",
        lambda: _tokens(r),
        lambda: _resumed(r),
    ]


def _dpo_data(r: dict) -> list:
    return [
        lambda: f"{r['pairs']:,} preference pairs (+{r['eval_pairs']:,} held out)",
        lambda: (
            "rejected = the SFT model's own answers"
            if r["rejected_source"] == "sft_model_generation"
            else f"rejected: {r['rejected_source']}"
        ),
    ]


def _dpo(r: dict) -> list:
    return [
        lambda: _steps(r),
        lambda: _loss(r),
        lambda: (
            f"reward accuracy {r['reward_accuracy_last']:.0%}, "
            f"margin {number(r['reward_margin_last'])}"
        ),
        lambda: f"held-out reward accuracy {r['eval_reward_accuracy']:.0%}",
        lambda: _tokens(r),
        lambda: _resumed(r),
    ]


def _embedder(r: dict) -> list:
    return [
        lambda: _steps(r),
        lambda: _loss(r, "loss_first", "loss_last"),
        lambda: (
            f"held-out MRR {number(r['heldout_before']['mrr'])} → {number(r['heldout']['mrr'])}"
        ),
        lambda: f"recall@5 {r['heldout']['recall@5']:.0%}",
    ]


def _eval(r: dict) -> list:
    return [
        lambda: (
            f"{len(r['results'])} models × "
            f"{len({t for c in r['results'].values() for t in c if t != 'wall_time_s'})} tasks "
            f"on the {r['split']} split (table at the end)"
        ),
    ]


def _gguf(r: dict) -> list:
    return [
        lambda: (
            ", ".join(f"{g['file']} ({g['bytes'] / 1e6:.1f} MB)" for g in r["gguf"].values())
            + " with an ollama Modelfile each"
        ),
    ]


FIGURES: dict[str, Callable[[dict], list]] = {
    "tokenizer": _tokenizer,
    "pretrain": _pretrain,
    "sft": _sft,
    "dpo-data": _dpo_data,
    "dpo": _dpo,
    "embedder": _embedder,
    "gguf": _gguf,
    "eval": _eval,
}


def figures(stage: str, report: dict) -> str:
    """The stage's headline figures, comma-separated; those its report lacks are left out."""
    parts = []
    for part in FIGURES.get(stage, lambda r: [])(report):
        try:
            text = part()
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            continue  # the report lacks it, or holds None: leave it out
        if text:
            parts.append(text)
    return ", ".join(parts)


def done_line(stage: str, report: dict, seconds: float) -> str:
    shown = figures(stage, report)
    return f"{stage:<{NAME_WIDTH}} done in {duration(seconds)}" + (f" — {shown}" if shown else "")


def pipeline_ending(summary: dict, run_dir: Path, logs: Path | None = None) -> str:
    """What `xiaophi-train pipeline` prints last: what ran, the eval table, the chat model's
    answers to held-out probe questions, and where the summary and the logs are."""
    run_dir = Path(run_dir)
    ran = summary.get("ran_this_time") or []
    model = summary.get("final_model", run_dir / "dpo")
    if ran:
        head = (
            f"pipeline   done in {duration(summary.get('wall_time_s', 0))} "
            f"({len(ran)} stage{'s' if len(ran) != 1 else ''} ran) — chat model {model}"
        )
    else:
        head = f"pipeline   nothing to run: every stage finished earlier — chat model {model}"
    lines = [head]
    ev = summary.get("eval")
    if ev and ev.get("table"):
        limit = f", {ev['limit']} items per task" if ev.get("limit") else ""
        lines += ["", f"eval ({ev['split']} split{limit}; ± = 95% interval):", ev["table"]]
    probe = summary.get("probe") or []
    if probe:
        lines += [
            "",
            "the chat model's answers to held-out questions (greedy, with its generation_config.json's repetition penalty):",
        ]
        for row in probe:
            answer = " ".join(str(row.get("answer", "")).split())
            lines.append(f"  {row.get('question', '?')}")
            lines.append(f"    → {answer[:80]}{'…' if len(answer) > 80 else ''}")
    gguf = (summary.get("stages") or {}).get("gguf", {}).get("gguf") or {}
    if gguf:
        first = next(iter(gguf.values()))["file"]
        modelfile = first.removesuffix(".gguf") + ".Modelfile"
        lines += [
            "",
            f"for llama.cpp and ollama: {run_dir / 'gguf'}/ — e.g. "
            f"`cd {run_dir / 'gguf'} && ollama create xiaophi -f {modelfile} && ollama run xiaophi`",
        ]
    where = f"summary: {run_dir / 'training_summary.json'}"
    if logs is not None:
        where += f" · logs: {logs}/"
    return "\n".join([*lines, "", where])
