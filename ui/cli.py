"""`xiaophi-ui`: the page on its own, in front of any xiaophi server."""

from __future__ import annotations

import argparse
import os


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="xiaophi-ui", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--api",
        default=os.environ.get("XIAOPHI_UI_API", "http://127.0.0.1:8000"),
        help="base URL of the xiaophi server (XIAOPHI_UI_API; default http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("XIAOPHI_UI_API_KEY"),
        help="key the page sends when the user gives none (XIAOPHI_UI_API_KEY)",
    )
    parser.add_argument(
        "--default-kb",
        default=os.environ.get("XIAOPHI_UI_DEFAULT_KB"),
        help="knowledge base selected when the page opens, if it exists (XIAOPHI_UI_DEFAULT_KB)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from ui.app import build_ui  # imports gradio, after `ui` switched its analytics off

    demo = build_ui(args.api, args.api_key, default_kb=args.default_kb)
    demo.queue().launch(
        server_name=args.host, server_port=args.port, share=False, ssr_mode=False, run_history=False
    )


if __name__ == "__main__":
    main()
