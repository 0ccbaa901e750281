"""Who is asking, and how much each one may take: client identity, fair shares, the access log.

A client is an API key when the server has keys (the key's place in the list, never the key),
or else the address a request comes from. Each client may have at most
``ServeLimits.per_client`` samples generated at once (:class:`ClientShares`); past that it gets
429 with ``Retry-After``, whatever the server as a whole still has free. So one client opening
hundreds of streams takes a quarter of the server (by default), and every other client's
requests still find room. The global bound (``max_active``, 503) is the scheduler's.

Without keys, everything behind one proxy (or one NAT) is one client: put keys on a server
that several people reach through the same address.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import CharloomError

#: Where :class:`KeyAuth` (auth.py) leaves the client it recognised, in the ASGI scope.
SCOPE_KEY = "charloom.client"

#: The access log's logger; ``charloom serve --access-log`` sends it to standard output.
ACCESS_LOGGER = "charloom.serve.access"

#: A refused client is told to retry after this many seconds, and its 429 is held back about as
#: long: a client that retries at once, on every connection it has, then costs the server one
#: cheap answer per connection per second instead of keeping its event loop busy with refusals.
RETRY_AFTER_S = 1
#: How much a held 429 is held back, at random, as a fraction of its hold: between half and one
#: and a half times it. Refusals that all came in at once (a flood's connections asking again
#: together) then go back out, and come in again, spread over a second rather than as one burst
#: that would hold up the event loop - and everyone else's requests - at once.
HOLD_SPREAD = 0.5
#: The longest a 429 is held back, in multiples of RETRY_AFTER_S (see ShareGuard).
MAX_HOLD = 10


@dataclass(frozen=True)
class Client:
    """One client: ``id`` is what its share is counted by (``key 2``, ``address 10.0.0.7``);
    ``label`` is what the access log may show (a key's first 4 characters at most)."""

    id: str
    label: str = "-"


class ClientBusy(CharloomError):
    """This client holds its share of the server already; it should retry shortly."""


def client_of(scope: Scope) -> Client:
    """The client of a request: the key :class:`KeyAuth` recognised, or else its address."""
    known = scope.get(SCOPE_KEY)
    if isinstance(known, Client):
        return known
    address = scope.get("client")
    return Client(f"address {address[0] if address else 'unknown'}")


class Share:
    """Rows one request holds of its client's share until :meth:`release` (safe to repeat)."""

    def __init__(self, shares: ClientShares, client: str, rows: int) -> None:
        self._shares, self.client, self.rows = shares, client, rows
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._shares._give_back(self.client, self.rows)

    @contextlib.contextmanager
    def released_on_error(self) -> Iterator[None]:
        """Give the rows back if the block fails (the request never started)."""
        try:
            yield
        except BaseException:
            self.release()
            raise

    def __enter__(self) -> Share:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ClientShares:
    """How many samples each client has in progress, bounded by ``per_client``.

    Used on the event loop only (admission and release happen there), so it needs no lock.
    """

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._held: dict[str, int] = {}

    def holding(self, client: str) -> int:
        return self._held.get(client, 0)

    def check(self, client: str, rows: int) -> None:
        """:class:`ClientBusy` if ``rows`` more samples would take ``client`` past its share."""
        held = self.holding(client)
        if held + rows > self.per_client:
            raise ClientBusy(
                f"this client has {held} samples in progress already (at most "
                f"{self.per_client} per client); try again in a moment"
            )

    def take(self, client: str, rows: int) -> Share:
        """Hold ``rows`` samples for ``client``; :class:`ClientBusy` if that is past its share."""
        self.check(client, rows)
        self._held[client] = self.holding(client) + rows
        return Share(self, client, rows)

    def _give_back(self, client: str, rows: int) -> None:
        left = self._held.get(client, 0) - rows
        if left > 0:
            self._held[client] = left
        else:
            self._held.pop(client, None)


async def refusal(exc: ClientBusy) -> JSONResponse:
    """The 429 for ``exc``, after :data:`RETRY_AFTER_S` seconds (see there)."""
    await anyio.sleep(RETRY_AFTER_S)
    return JSONResponse(
        {"message": str(exc), "detail": str(exc)},
        status_code=429,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


class ShareGuard:
    """ASGI middleware: refuse a generation request from a client whose share is full before
    the app parses it, so a client that keeps asking costs little. (One that fits only in part -
    more samples than it has room for - is refused by the route, after parsing.)

    The refusal is written straight to the connection and held back: :data:`RETRY_AFTER_S`,
    and one more for each ``per_client`` refusals of this client already waiting (at most
    :data:`MAX_HOLD` times it), spread by :data:`HOLD_SPREAD`; ``Retry-After`` says as much.
    A client past its share on a request or two waits a second; one that keeps hundreds of
    refused requests in the air waits longer for each, so that it asks - and costs the event
    loop a parsed request - a few times less often. The request's body (at most ``max_body``
    bytes, read within the hold) is read and dropped first, so that the connection stays open
    for the client's next request: a refusal costs one parsed request, not a new connection
    as well."""

    def __init__(
        self, app: ASGIApp, shares: ClientShares, paths: frozenset[str], max_body: int
    ) -> None:
        self.app = app
        self.shares = shares
        self.paths = paths
        self.max_body = max_body
        self._random = random.Random()
        self._waiting: dict[str, int] = {}  # refusals held back now, by client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") in self.paths:
            client = client_of(scope).id
            try:
                self.shares.check(client, 1)
            except ClientBusy as exc:
                waiting = self._waiting.get(client, 0)
                self._waiting[client] = waiting + 1
                try:
                    await self._refuse(exc, waiting, receive, send)
                finally:
                    self._give_back(client)
                return
        await self.app(scope, receive, send)

    def _give_back(self, client: str) -> None:
        left = self._waiting[client] - 1
        if left:
            self._waiting[client] = left
        else:
            del self._waiting[client]

    async def _refuse(self, exc: ClientBusy, waiting: int, receive: Receive, send: Send) -> None:
        retry_after = hold_for(waiting, self.shares.per_client)
        hold = retry_after * (1 + HOLD_SPREAD * (2 * self._random.random() - 1))
        start = time.monotonic()
        read = False
        with anyio.move_on_after(hold):
            read = await _read_body(receive, self.max_body)
        await anyio.sleep(max(0.0, hold - (time.monotonic() - start)))
        body = json.dumps({"message": str(exc), "detail": str(exc)}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(retry_after).encode()),
        ]
        if not read:
            headers.append((b"connection", b"close"))  # its body is left unread
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def hold_for(waiting: int, per_client: int) -> int:
    """Seconds a refusal is held back (give or take :data:`HOLD_SPREAD`), and its
    ``Retry-After``, when ``waiting`` refusals of the same client are held back already:
    :data:`RETRY_AFTER_S`, one more for each ``per_client`` of those, at most :data:`MAX_HOLD`
    times it."""
    return min(MAX_HOLD, 1 + waiting // per_client) * RETRY_AFTER_S


async def _read_body(receive: Receive, limit: int) -> bool:
    """Read a request's body to its end and drop it; whether it ended within ``limit`` bytes
    (the connection can then serve the client's next request)."""
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return False  # the client went away
        size += len(message.get("body", b""))
        if size > limit:
            return False
        if not message.get("more_body", False):
            return True


class AccessLog:
    """ASGI middleware: one line per request on the ``charloom.serve.access`` logger, naming
    the client by address and by a key's first 4 characters at most (uvicorn's own access log
    is turned off when keys are in use, since it cannot say which key asked)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                address = scope.get("client")
                where = f"{address[0]}:{address[1]}" if address else "-"
                query = scope.get("query_string", b"").decode("latin-1")
                path = scope.get("path", "") + (f"?{query}" if query else "")
                self.log.info(
                    '%s %s "%s %s HTTP/%s" %d',
                    where,
                    client_of(scope).label,
                    scope.get("method", ""),
                    path,
                    scope.get("http_version", "1.1"),
                    message["status"],
                )
            await send(message)

        await self.app(scope, receive, logged)
