"""The server's throughput for ``charloom bench``: its app driven in this process by many
streaming requests at once, read as a client reads them (bench.py sets the figures beside
``sample``'s)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from ..errors import CharloomError
from ..model import CharRNN
from ..sample import engine_name
from ..vocab import Vocab

#: Why ``server_chars_per_s`` is None where the server cannot run.
NO_SERVER = "- (FastAPI or uvicorn is missing: pip install 'fastapi>=0.110' 'uvicorn>=0.29')"


#: Warm-up requests (0.1 s apart) at most, until the worker steps with the engine ``sample``
#: uses (a worker process loads the compiled kernels from numba's cache in a second or so).
WARM_UP_TRIES = 600


def server_available() -> bool:
    """Whether the server's app can be built here: it needs FastAPI (uvicorn is not needed to
    drive the app in-process)."""
    return importlib.util.find_spec("fastapi") is not None


def server_chars_per_s(
    model: CharRNN, streams: int, n: int, seeded: bool = False, worker: str = "thread"
) -> float:
    """New characters per second of ``streams`` concurrent streaming ``/v1/generate`` requests of
    ``n`` characters each, unseeded (the default request) or each with its own seed: through the
    server's ASGI app in this process - validation, the scheduler, server-sent events - as a
    client gets them, less only the HTTP parsing of a server such as uvicorn. ``worker``: where
    the model generates, as ``charloom serve --worker`` (its default: a thread)."""
    from ..charmodel import CharModel
    from .app import create_app
    from .limits import ServeLimits

    vocab = Vocab.build("printable")
    limits = ServeLimits(max_length=n, max_active=max(512, streams))
    app = create_app(CharModel(model, vocab, False, {}, Path("bench")), limits, worker=worker)
    engine = engine_name(model)  # the steady state: the worker on the engine sample uses

    async def measure() -> float:
        try:
            for _ in range(WARM_UP_TRIES):  # a process starts, loads the compiled kernels
                await _asgi_stream(app, {"prime": "T", "length": 64, "stream": True})
                if app.state.scheduler.engine == engine:
                    break
                await asyncio.sleep(0.1)
            start = time.perf_counter()
            made = await asyncio.gather(
                *(
                    _asgi_stream(
                        app,
                        {"prime": "T", "length": n, "stream": True, "seed": i if seeded else None},
                    )
                    for i in range(streams)
                )
            )
            elapsed = time.perf_counter() - start
        finally:
            await app.state.scheduler.close()
        return sum(made) / elapsed

    return asyncio.run(measure())


async def _asgi_stream(app: Any, body: dict) -> int:
    """POST ``body`` to ``/v1/generate`` through the ASGI interface and read the event stream to
    its end; returns the number of new characters its ``done`` event holds."""
    sent, pieces = False, []

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await asyncio.Event().wait()  # the client stays: wait until the response is over
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body":
            pieces.append(message.get("body", b""))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/generate",
        "raw_path": b"/v1/generate",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    last = b"".join(pieces).rstrip().rsplit(b"\n\n", 1)[-1].decode()
    event, data = (line.split(": ", 1)[1] for line in last.split("\n"))
    if event != "done":
        raise CharloomError(f"the server's stream ended with {event}: {data}")
    return sum(len(c) for c in json.loads(data)["completions"])


def server_rows(r: dict) -> list[tuple[str, str]]:
    """``charloom bench``'s table rows for the server's figures in ``r`` (or why there are none)."""
    rows = []
    for key, what in (("server", "unseeded"), ("server_seeded", "seeded")):
        cps, ratio = r.get(f"{key}_chars_per_s"), r.get(f"{key}_over_offline")
        value = f"{cps:,.0f} ({ratio:.2f}x offline)" if cps is not None else NO_SERVER
        rows.append((f"server, 64 streaming requests, {what} (chars/s)", value))
    return rows
