"""``chatforge serve``: its arguments and what it runs (the server's modules load only when it runs)."""

import argparse
import ipaddress
import os
import warnings
from pathlib import Path

from ..errors import InvalidValue

TOOLS = ("calculator", "python", "search")
API_KEY_ENV = "CHATFORGE_API_KEY"


def add_commands(stages) -> None:
    serve = stages.add_parser("serve", help="serve a chat model: OpenAI-compatible API (and /v1/completions)")
    serve.add_argument("model", help="model folder (a chatforge export or any transformers chat model) or Hub id")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--tools", default="", help=f"comma-separated built-in tools to run: {', '.join(TOOLS)}")
    serve.add_argument("--search-index", default=None, help="folder of a search index (for the search tool)")
    serve.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                       help=f"require 'Authorization: Bearer KEY' on every endpoint but /health (or ${API_KEY_ENV})")
    serve.add_argument("--served-model-name", default=None, help="the model id clients use (default: folder name)")
    serve.add_argument("--max-batch", type=int, default=32, help="sequences decoded together")
    serve.add_argument("--max-tokens", type=int, default=2048, help="the most tokens one request may generate")
    serve.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda where available)")
    serve.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> None:
    import uvicorn

    from ..inference.engine import Engine
    from ..tools import Toolbox, default_toolbox
    from .app import ServerLimits, create_app

    tools = [name.strip() for name in args.tools.split(",") if name.strip()]
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        raise InvalidValue(f"--tools: unknown tool(s) {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
    if "search" in tools and args.search_index is None:
        raise InvalidValue("--tools search needs --search-index DIR (chatforge tools index builds one)")
    available = default_toolbox(args.search_index if "search" in tools else None)
    toolbox = Toolbox({name: available.tools[name] for name in tools}) if tools else None
    engine = Engine.from_pretrained(args.model, toolbox=toolbox, device=args.device)
    if not _loopback(args.host) and not args.api_key:
        warnings.warn(f"serving on {args.host} without --api-key: anyone who can reach it can use the model"
                      + (" and its tools" if tools else ""), stacklevel=1)
    name = args.served_model_name or Path(args.model.rstrip("/")).name
    app = create_app(engine, name, use_tools=bool(tools), api_key=args.api_key,
                     limits=ServerLimits(max_tokens=args.max_tokens, max_batch=args.max_batch))
    uvicorn.run(app, host=args.host, port=args.port)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


__all__ = ["add_commands", "serve_command"]
