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

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import CharloomError

#: Where :class:`KeyAuth` (auth.py) leaves the client it recognised, in the ASGI scope.
SCOPE_KEY = "charloom.client"

#: The access log's logger; ``charloom serve --access-log`` sends it to standard error.
ACCESS_LOGGER = "charloom.serve.access"


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

    def take(self, client: str, rows: int) -> Share:
        """Hold ``rows`` samples for ``client``; :class:`ClientBusy` if that is past its share."""
        held = self.holding(client)
        if held + rows > self.per_client:
            raise ClientBusy(
                f"this client has {held} samples in progress already (at most "
                f"{self.per_client} per client); try again in a moment"
            )
        self._held[client] = held + rows
        return Share(self, client, rows)

    def _give_back(self, client: str, rows: int) -> None:
        left = self._held.get(client, 0) - rows
        if left > 0:
            self._held[client] = left
        else:
            self._held.pop(client, None)


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
