"""``charloom serve``: the HTTP generation API and the web playground."""

from __future__ import annotations

import argparse

from .options import add_checkpoint, add_device, finite_float, int_at_least

#: The serving limits offered as flags, with what each one bounds (the defaults are ServeLimits').
_LIMITS = (
    ("max_length", "new characters per sample"),
    ("max_samples", "samples per request"),
    ("max_prime", "characters of prime"),
    ("max_body", "bytes of request body"),
    ("max_active", "samples generated at once, all requests together"),
    ("max_connections", "open connections"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to ``subparsers``."""
    from ..serve.limits import ServeLimits

    sv = subparsers.add_parser(
        "serve",
        help="an HTTP generation API and a web playground",
        description=(
            "Serve a model: the playground at /, the API under /v1 (documented at /docs). "
            "Listens on loopback unless --host says otherwise (0.0.0.0: all interfaces); "
            "another address needs API keys (--api-key-file, or CHARLOOM_API_KEYS: keys "
            "separated by commas) or --no-auth."
        ),
    )
    sv.add_argument("run", metavar="RUN", help="run directory or checkpoint folder")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sv.add_argument("--port", type=int_at_least(1), default=8000, help="port (8000)")
    add_checkpoint(sv)
    add_device(sv, "cpu")
    sv.add_argument("--threads", type=int_at_least(1), default=None, help="torch threads")
    sv.add_argument("--access-log", action="store_true", help="log every request")
    sv.add_argument(
        "--worker",
        choices=("thread", "process"),
        default="thread",
        help="where the model generates: a thread of the server's process (default), or a "
        "process of its own (more text per second under heavy load; a short request waits "
        "longer beside a flood of streams)",
    )
    bounds = ServeLimits()
    for name, text in _LIMITS:
        sv.add_argument(
            "--" + name.replace("_", "-"),
            type=int_at_least(1),
            default=None,
            help=f"{text} ({getattr(bounds, name)})",
        )
    sv.add_argument(
        "--max-active-per-client",
        type=int_at_least(1),
        default=None,
        help="samples one client (API key, or address without keys) generates at once, then "
        "429 (a quarter of --max-active)",
    )
    sv.add_argument(
        "--chunk-ms",
        type=finite_float,
        default=None,
        help="milliseconds of generation between deliveries of text, 1..1000 "
        f"({bounds.chunk_ms:g}): smaller gives smoother streams, larger more throughput",
    )
    sv.add_argument(
        "--api-key-file",
        metavar="FILE",
        default=None,
        help="API keys, one per line (# comments); requests need 'Authorization: Bearer KEY'",
    )
    sv.add_argument(
        "--no-auth",
        action="store_true",
        help="serve an address other than loopback without keys (anyone can use it)",
    )
    sv.add_argument("--ssl-certfile", metavar="FILE", default=None, help="TLS certificate (PEM)")
    sv.add_argument("--ssl-keyfile", metavar="FILE", default=None, help="its private key (PEM)")
    sv.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; limits not given keep ServeLimits' defaults."""
    from ..serve import ServeLimits, serve

    names = [name for name, _ in _LIMITS] + ["max_active_per_client", "chunk_ms"]
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    serve(
        args.run,
        host=args.host,
        port=args.port,
        limits=ServeLimits(**given),
        checkpoint=args.checkpoint,
        device=args.device,
        threads=args.threads,
        access_log=args.access_log,
        worker=args.worker,
        api_key_file=args.api_key_file,
        no_auth=args.no_auth,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    return 0
