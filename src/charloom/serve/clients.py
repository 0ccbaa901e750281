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
import logging
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

#: A refused client is told to retry after this many seconds, and its 429 is held back as long:
#: a client that retries at once, on every connection it has, then costs the server one cheap
#: answer per connection per second instead of keeping its event loop busy with refusals.
RETRY_AFTER_S = 1


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
    its body is read or parsed, so a client that keeps asking costs little. (One that fits only
    in part - more samples than it has room for - is refused by the route, after parsing.)"""

    def __init__(self, app: ASGIApp, shares: ClientShares, paths: frozenset[str]) -> None:
        self.app = app
        self.shares = shares
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") in self.paths:
            try:
                self.shares.check(client_of(scope).id, 1)
            except ClientBusy as exc:
                response = await refusal(exc)
                response.headers["Connection"] = "close"  # its body is left unread
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
