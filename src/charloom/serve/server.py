"""Run the app under uvicorn: load the model, check the address, bind, serve until Ctrl-C.

The socket is bound here rather than by uvicorn so that a busy port or an unknown host is a
one-line ``charloom: error`` instead of a log message and a bare exit status. The same goes for
the keys (auth.py) and the TLS certificate: both are read and checked before anything listens,
and an address other than loopback is served only with keys, or with an explicit ``no_auth``.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import socket
import ssl
import sys
from collections.abc import Callable

import torch
import uvicorn
from uvicorn.config import LOGGING_CONFIG

from ..charmodel import load
from ..errors import CharloomError
from .app import WORKERS, create_app
from .auth import KEYS_ENV, ApiKeys
from .clients import ACCESS_LOGGER
from .limits import ServeLimits
from .scheduler import freeze_long_lived

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


def url(host: str, port: int, tls: bool = False) -> str:
    scheme = "https" if tls else "http"
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"{scheme}://[{host}]:{port}/"
    except ValueError:
        pass
    return f"{scheme}://{host}:{port}/"


def is_loopback(sock: socket.socket) -> bool:
    """Whether ``sock`` is bound to a loopback address (only this machine can reach it)."""
    try:
        return ipaddress.ip_address(sock.getsockname()[0].split("%")[0]).is_loopback
    except ValueError:
        return False


def check_tls(certfile: str | None, keyfile: str | None) -> None:
    """Load the certificate and its key as uvicorn will, so a bad pair is one line now rather
    than a traceback later. A key protected by a passphrase is refused (nobody could type it)."""
    if certfile is None:
        if keyfile is not None:
            raise CharloomError("--ssl-keyfile needs --ssl-certfile (the certificate) too")
        return
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path is not None and not os.path.isfile(path):
            raise CharloomError(f"{flag} {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or "unreadable"
        raise CharloomError(
            f"--ssl-certfile {certfile}"
            + (f" with --ssl-keyfile {keyfile}" if keyfile else "")
            + f": not a PEM certificate with its (unencrypted) private key ({reason})"
        ) from None


def log_config(access_log: bool) -> dict:
    """uvicorn's logging set-up, plus our access log (to standard output, as uvicorn's was)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    if access_log:
        config["handlers"]["charloom_access"] = {
            "formatter": "default",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
        }
        config["loggers"][ACCESS_LOGGER] = {
            "handlers": ["charloom_access"],
            "level": "INFO",
            "propagate": False,
        }
    return config


def serve(
    run: str | os.PathLike,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    limits: ServeLimits | None = None,
    checkpoint: str = "best",
    device: str = "cpu",
    threads: int | None = None,
    access_log: bool = False,
    worker: str = "thread",
    api_key_file: str | os.PathLike | None = None,
    no_auth: bool = False,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    say: Callable[[str], None] | None = None,
) -> None:
    """Serve run ``run`` on ``host:port`` until interrupted. Everything is checked - address,
    limits, keys (``api_key_file`` and ``CHARLOOM_API_KEYS``), certificate, the run - before
    anything listens. A non-loopback address needs keys, or ``no_auth=True``. ``worker``:
    where the model generates, ``thread`` (of this process) or ``process`` (of its own)."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    limits = limits or ServeLimits()
    limits.validate()
    check_address(host, port)
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise CharloomError(f"--threads must be an integer >= 1, not {threads!r}")
    if worker not in WORKERS:
        raise CharloomError(f"worker must be one of {', '.join(WORKERS)}, not {worker!r}")
    check_tls(ssl_certfile, ssl_keyfile)
    keys = ApiKeys.gather(api_key_file, warn=say)
    if keys is not None and no_auth:
        raise CharloomError(
            f"--no-auth contradicts the keys given (--api-key-file or {KEYS_ENV}): drop one"
        )
    sock = bind(host, port)  # before the (slower) model load, so a busy port fails at once
    try:
        if not is_loopback(sock) and keys is None and not no_auth:
            raise CharloomError(
                f"refusing to serve {host} without API keys (anyone who can reach it could use "
                "the model): give --api-key-file FILE, or --no-auth to serve it open anyway"
            )
        model = load(run, which=checkpoint, device=device)
    except BaseException:
        sock.close()
        raise
    torch.set_num_threads(threads or default_threads())
    app = create_app(model, limits, keys=keys, access_log=access_log, worker=worker)
    freeze_long_lived()  # all alive now lives as long as the server (see the function)
    config = uvicorn.Config(
        app,
        log_level="info" if access_log else "warning",
        log_config=log_config(access_log),
        access_log=False,  # ours (clients.AccessLog) names the key; uvicorn's cannot
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=3,
        server_header=False,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
    if not is_loopback(sock):
        if keys is None:
            say(
                f"charloom: warning: serving {host} with --no-auth: anyone who can reach this "
                "port can use the model"
            )
        elif ssl_certfile is None:
            say(
                "charloom: warning: without --ssl-certfile the keys and the text cross the "
                "network unencrypted"
            )
    if keys is not None:
        say(f"charloom: {len(keys)} API key(s); requests need 'Authorization: Bearer KEY'")
    where = url(host, port, tls=ssl_certfile is not None)
    say(f"charloom: serving {model.path} at {where} (API docs: {where}docs)")
    say("charloom: press Ctrl-C to stop")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
