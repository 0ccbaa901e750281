"""The HTTP app: the generation API, the playground page and offline API docs.

``create_app(model, limits)`` builds a FastAPI app around a loaded :class:`CharModel`; nothing
here touches the network or the process's settings, so tests run the app in-process and
``charloom serve`` hands the same app to uvicorn.

Failure answers are JSON with a one-line ``message`` naming the field:
422 for a bad request body (bad type, out of range, unknown field, prime characters outside the
vocabulary), 413 for a body over ``max_body`` bytes, 429 when the client already has its share
of samples in progress and 503 when ``max_active`` samples are (both with ``Retry-After``), 500
if the model itself fails; with API keys, 401 without a valid one (auth.py).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at
# run time, and the request models are local to create_app.

import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing, asynccontextmanager
from importlib import resources
from typing import Any, cast

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._version import __version__
from ..charmodel import CharModel
from ..errors import CharloomError
from ..sample import SampleSettings
from .auth import ApiKeys, KeyAuth
from .clients import AccessLog, ClientBusy, ClientShares, ShareGuard, client_of, refusal
from .events import EventStream, sse
from .jobs import GenerateJob, NextJob
from .limits import ServeLimits
from .process import ProcessScheduler
from .scheduler import Admission, GenerationFailed, Scheduler, ServerBusy
from .schemas import (
    Candidate,
    ErrorResponse,
    GenerateParams,
    GenerateResponse,
    NextParams,
    NextResponse,
    request_models,
)

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The pages are self-contained (inline script and style, no CDN) and talk only to us.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
    ),
}


# An oversized body up to this size is read to its end (and dropped) before the 413 goes out.
DRAIN_LIMIT = 16 * 1024 * 1024
DRAIN_SECONDS = 5.0


def _static(name: str) -> str:
    return (resources.files("charloom.serve") / "static" / name).read_text(encoding="utf-8")


# --- request bodies: size guard and error shape ------------------------------------------------
class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_body`` bytes with 413, before parsing.

    It reads the body itself (at most ``max_body`` bytes of it, whatever Content-Length claims),
    then replays it to the app; after the body, ``receive`` passes through so the app still
    hears when the client disconnects.
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = 0  # the HTTP server rejects a malformed length itself
            if size > self.max_body:
                await self._refuse(scope, receive, send, drain=size <= DRAIN_LIMIT)
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            more = message.get("more_body", False)
            if size > self.max_body:
                await self._refuse(scope, receive, send, drain=more)
                return
            chunks.append(body)
            if not more:
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, drain: bool) -> None:
        if drain:
            # Read and drop the rest of the body first: a client still sending when we close
            # gets a reset connection instead of our answer. Past DRAIN_LIMIT bytes or
            # DRAIN_SECONDS, stop reading and answer anyway.
            drained = 0
            with anyio.move_on_after(DRAIN_SECONDS):
                while drained <= DRAIN_LIMIT:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    drained += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
        reason = f"the request body is larger than {self.max_body} bytes"
        response = JSONResponse(
            {"message": reason, "detail": reason},
            status_code=413,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _field(loc) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def _explain(error: dict, allowed: dict[str, list[str]], path: str) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        fields = ", ".join(allowed.get(path, []))
        return f"unknown field (the fields are: {fields})"
    if kind == "missing":
        return "required"
    if kind in ("json_invalid", "json_type"):
        return f"the body is not valid JSON ({error.get('msg', '')})"
    if kind == "model_attributes_type" or kind == "dict_type":
        return "the body must be a JSON object"
    return str(error.get("msg", "invalid"))


def _validation_response(errors: list[dict], allowed: dict, path: str) -> JSONResponse:
    items = []
    for e in errors:
        loc = list(e.get("loc") or ["body"])
        if e.get("type") == "json_invalid":
            loc = ["body"]  # pydantic puts the character offset here, which is not a field
        item = {
            "field": _field(loc),
            "msg": _explain(e, allowed, path),
            "type": str(e.get("type", "value_error")),
            "loc": [p if isinstance(p, int) else str(p) for p in loc],
        }
        if "unknown" in e:
            item["unknown"] = e["unknown"]
        items.append(item)
    message = "; ".join(f"{i['field']}: {i['msg']}" for i in items) or "invalid request"
    return JSONResponse({"message": message, "detail": items}, status_code=422)


def _unknown_chars_error(model: CharModel, field: str, text: str) -> RequestValidationError | None:
    bad = model.vocab.unknown(text)
    if not bad:
        return None
    shown = ", ".join(repr(c) for c in bad[:20]) + (
        f" and {len(bad) - 20} more" if len(bad) > 20 else ""
    )
    if field == "text":  # /v1/next can read around them
        shown += '; send "unknown": "skip" to leave them out'
    return RequestValidationError(
        [
            {
                "loc": ("body", field),
                "type": "unknown_characters",
                "msg": f"{len(bad)} character(s) outside the model's vocabulary: {shown}",
                "unknown": bad[:100],
            }
        ]
    )


# --- the app ----------------------------------------------------------------------------------
#: Where the generation worker runs: a thread of the server's process (the library's default:
#: an app made in a test or a notebook starts at once), or a process of its own (``charloom
#: serve``'s: the event loop then never waits for the worker's interpreter lock; see process.py).
WORKERS: dict[str, Callable[..., Admission]] = {"thread": Scheduler, "process": ProcessScheduler}


def create_app(
    model: CharModel,
    limits: ServeLimits | None = None,
    keys: ApiKeys | None = None,
    access_log: bool = False,
    worker: str = "thread",
) -> FastAPI:
    """A FastAPI app serving ``model`` within ``limits``: API under /v1, playground at /.
    With ``keys``, every path but /healthz and the two pages needs one (see auth.py);
    ``access_log``: a line per request on the ``charloom.serve.access`` logger; ``worker``:
    ``thread`` or ``process`` (:data:`WORKERS`)."""
    limits = limits or ServeLimits()
    limits.validate()
    vocab = model.vocab
    if worker not in WORKERS:
        raise CharloomError(f"worker must be one of {', '.join(WORKERS)}, not {worker!r}")
    scheduler = WORKERS[worker](model.model, vocab, limits.max_active, limits.chunk_ms)
    shares = ClientShares(limits.per_client)
    GenerateRequest, NextRequest = request_models(limits, vocab.size)
    allowed = {
        "/v1/generate": list(GenerateRequest.model_fields),
        "/v1/next": list(NextRequest.model_fields),
    }
    playground = _static("playground.html")
    docs = _static("docs.html")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()  # warm the model up before the first request, not during it
        yield
        await scheduler.close()

    app = FastAPI(
        title="charloom",
        version=__version__,
        description=(
            "Generate text with a character-level recurrent model. Bodies are JSON; a bad "
            "request gets 422 with a `message` naming the field."
        ),
        docs_url=None,  # FastAPI's own docs page loads its scripts from a CDN; ours is offline
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.scheduler = scheduler
    app.state.limits = limits
    app.state.shares = shares
    app.add_middleware(BodyLimit, max_body=limits.max_body)
    app.add_middleware(
        ShareGuard, shares=shares, paths=frozenset(allowed), max_body=limits.max_body
    )
    if keys is not None:  # outside the body limit: a stranger's body is never read
        app.add_middleware(KeyAuth, keys=keys)
    if access_log:
        app.add_middleware(AccessLog)
    bad_request: dict[int | str, dict[str, Any]] = {
        413: {"model": ErrorResponse, "description": f"the body is over {limits.max_body} bytes"},
        422: {"model": ErrorResponse, "description": "a field is invalid"},
        500: {"model": ErrorResponse, "description": "the model failed"},
    }
    busy: dict[int | str, dict[str, Any]] = {
        429: {"model": ErrorResponse, "description": "this client's share is in progress"},
        503: {"model": ErrorResponse, "description": "too many samples in progress"},
    }

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(list(exc.errors()), allowed, request.url.path)

    @app.exception_handler(ServerBusy)
    async def on_busy(request: Request, exc: ServerBusy) -> JSONResponse:
        return JSONResponse(
            {"message": str(exc), "detail": str(exc)},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(ClientBusy)
    async def on_client_busy(request: Request, exc: ClientBusy) -> JSONResponse:
        return await refusal(exc)

    @app.exception_handler(GenerationFailed)
    async def on_failed(request: Request, exc: GenerationFailed) -> JSONResponse:
        return JSONResponse({"message": str(exc), "detail": str(exc)}, status_code=500)

    def prepare(field: str, text: str) -> tuple[str, list[int]]:
        """``text`` as the model reads it, and its ids; 422 naming any unknown characters."""
        text = model.normalise(text)
        error = _unknown_chars_error(model, field, text)
        if error is not None:
            raise error
        if not text:
            raise RequestValidationError(
                [{"loc": ("body", field), "type": "empty", "msg": "empty after normalisation"}]
            )
        return text, [int(i) for i in vocab.encode(text, what=field)]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(playground, headers=_SECURITY_HEADERS)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return HTMLResponse(docs, headers=_SECURITY_HEADERS)

    @app.get("/healthz", summary="Liveness, and what the generation worker holds now")
    async def healthz() -> dict:
        return {"status": "ok", **scheduler.stats()}

    @app.get("/v1/model", summary="The model's settings, vocabulary and training summary")
    async def model_info() -> dict:
        tr = model.training
        summary = {
            k: tr.get(k)
            for k in (
                "iterations",
                "chars_seen",
                "elapsed_s",
                "train_loss",
                "val_loss",
                "best_val_loss",
                "best_iteration",
            )
            if k in tr
        }
        vocab_info = {
            "kind": vocab.kind,
            "size": vocab.size,
            "ascii": model.ascii,
            "documents": model.documents_mode,
        }
        if vocab.kind != "bytes" and vocab.size <= 4096:
            vocab_info["chars"] = "".join(vocab.chars)
        return {
            "name": model.path.parent.name if model.path.name in ("best", "latest") else "",
            "checkpoint": model.path.name,
            "charloom_version": __version__,
            "model": model.config.to_dict(),
            "parameters": model.model.num_parameters(),
            "vocab": vocab_info,
            "training": summary,
            "limits": limits.to_dict(),
            "defaults": {
                name: f.default
                for name, f in GenerateRequest.model_fields.items()
                if name not in ("stream",)
            },
        }

    @app.post(
        "/v1/generate",
        summary="Generate text (JSON, or streamed as server-sent events)",
        response_model=GenerateResponse,
        responses={
            200: {
                "description": (
                    "JSON, or with `stream: true` a `text/event-stream`: `start`, then `text` "
                    "events `{index, text}` as characters are made, then `done` with the full "
                    "texts (or `error`)."
                ),
                "content": {"text/event-stream": {}},
            },
            **bad_request,
            **busy,
        },
    )
    async def generate(req: GenerateRequest, request: Request):  # type: ignore[valid-type]
        req = cast(GenerateParams, req)  # the run-time model has these fields
        documents = vocab.end is not None if req.documents is None else req.documents
        if documents and vocab.end is None:
            msg = "this model was not trained in documents mode"
            raise RequestValidationError(
                [{"loc": ("body", "documents"), "type": "value_error", "msg": msg}]
            )
        given = req.prime if "prime" in req.model_fields_set else None
        prime, prime_ids = "", list[int]()
        if given or not documents:  # a document may start from nothing but its start
            prime, prime_ids = prepare("prime", model.default_prime(given))
        settings = SampleSettings(req.temperature, req.top_k, req.top_p, req.greedy)
        settings.validate()
        client = client_of(request.scope).id
        job = GenerateJob(
            prime_ids,
            settings,
            req.length,
            req.num_samples,
            req.seed,
            documents=documents,
            client=client,
        )
        completions = [""] * req.num_samples
        started = time.perf_counter()
        share = shares.take(client, job.rows)  # 429 past the client's
        if not req.stream:
            with share:
                async with aclosing(scheduler.generate(job)) as pieces:
                    async for texts in pieces:
                        completions = [a + b for a, b in zip(completions, texts)]
            return GenerateResponse(
                texts=[prime + c for c in completions],
                completions=completions,
                prime=prime,
                ended=job.ended(),
                length=req.length,
                num_samples=req.num_samples,
                seed=req.seed,
                elapsed_s=round(time.perf_counter() - started, 4),
            )
        with share.released_on_error():
            pieces = scheduler.generate(job)  # submitted now: a full server answers 503, not 200

        async def events() -> AsyncGenerator[bytes, None]:
            nonlocal completions
            async with aclosing(pieces):
                yield sse("start", {"prime": prime, "num_samples": req.num_samples})
                try:
                    async for texts in pieces:
                        for i, text in enumerate(texts):
                            if text:
                                completions[i] += text
                                yield sse("text", {"index": i, "text": text})
                except (GenerationFailed, ServerBusy) as exc:
                    yield sse("error", {"message": str(exc)})
                    return
                yield sse(
                    "done",
                    {
                        "texts": [prime + c for c in completions],
                        "completions": completions,
                        "ended": job.ended(),
                        "elapsed_s": round(time.perf_counter() - started, 4),
                    },
                )

        def close() -> None:
            scheduler.cancel(job)
            share.release()

        return EventStream(events(), on_close=close)

    @app.post(
        "/v1/next",
        summary="The likeliest next characters after a text (the playground's interactive mode)",
        response_model=NextResponse,
        responses={**bad_request, **busy},
    )
    async def next_chars(req: NextRequest, request: Request) -> NextResponse:  # type: ignore[valid-type]
        req = cast(NextParams, req)  # the run-time model has these fields
        text, skipped = req.text, 0
        if req.unknown == "skip":  # as charloom eval --unknown skip: read the rest, joined up
            text, skipped = model.read_text(text, "skip")
        _, ids = prepare("text", text)
        settings = SampleSettings(req.temperature, req.top_k, req.top_p)
        settings.validate()
        client = client_of(request.scope).id
        with shares.take(client, 1):
            found = await scheduler.next_chars(NextJob(ids, settings, req.top, client=client))
        return NextResponse(
            candidates=[Candidate(char=_char(vocab, i), id=i, prob=p) for i, p in found],
            skipped=skipped,
        )

    return app


def _char(vocab, token: int) -> str | None:
    """The character of ``token``; in bytes mode, ``None`` for a byte that is not ASCII, and
    ``None`` for the end-of-document symbol (not a character)."""
    if token == vocab.end:
        return None
    if vocab.kind == "bytes":
        return chr(token) if token < 128 else None
    return vocab.chars[token]
