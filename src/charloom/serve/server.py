"""Run the app under uvicorn: load the model, check the address, bind, serve until Ctrl-C.

The socket is bound here rather than by uvicorn so that a busy port or an unknown host is a
one-line ``charloom: error`` instead of a log message and a bare exit status.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import socket
import sys
from collections.abc import Callable

import torch
import uvicorn

from ..charmodel import load
from ..errors import CharloomError
from .app import create_app
from .limits import ServeLimits

DEFAULT_HOST = "127.0.0.1"  # loopback: serving to other machines must be asked for
DEFAULT_PORT = 8000


def default_threads() -> int:
    """Torch threads for generation: leave a core to the event loop that answers HTTP."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def check_address(host: str, port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise CharloomError(f"--port must be an integer in 1..65535, not {port!r}")
    if not isinstance(host, str) or not host.strip():
        raise CharloomError("--host must be a host name or an IP address")


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port``; a :class:`CharloomError` if impossible."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CharloomError(f"cannot listen on {host}: unknown host ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise CharloomError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(another server there? choose another --port)"
        ) from None
    sock.set_inheritable(True)
    return sock


def url(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"http://[{host}]:{port}/"
    except ValueError:
        pass
    return f"http://{host}:{port}/"


def serve(
    run: str | os.PathLike,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    limits: ServeLimits | None = None,
    checkpoint: str = "best",
    device: str = "cpu",
    threads: int | None = None,
    access_log: bool = False,
    say: Callable[[str], None] | None = None,
) -> None:
    """Serve run ``run`` on ``host:port`` until interrupted. Everything is checked - address,
    limits, the run - before anything listens."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    limits = limits or ServeLimits()
    limits.validate()
    check_address(host, port)
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise CharloomError(f"--threads must be an integer >= 1, not {threads!r}")
    sock = bind(host, port)  # before the (slower) model load, so a busy port fails at once
    try:
        model = load(run, which=checkpoint, device=device)
    except BaseException:
        sock.close()
        raise
    torch.set_num_threads(threads or default_threads())
    app = create_app(model, limits)
    # Everything alive now (torch, FastAPI, the model) lives as long as the server: freezing it
    # keeps the garbage collector's full passes from scanning it, which otherwise stalls every
    # request in flight for a tenth of a second now and then.
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        app,
        log_level="info" if access_log else "warning",
        access_log=access_log,
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=3,
        server_header=False,
    )
    if host in ("0.0.0.0", "::"):
        say(
            "charloom: warning: listening on all interfaces: anyone who can reach this machine "
            "can use the model"
        )
    say(f"charloom: serving {model.path} at {url(host, port)} (API docs: {url(host, port)}docs)")
    say("charloom: press Ctrl-C to stop")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
