"""Server-sent events: how ``/v1/generate`` streams text (``sse``, ``EventStream``)."""

import json
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

import anyio
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send


def sse(event: str, data: dict) -> bytes:
    """One server-sent event; JSON keeps the data on one line."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class EventStream(Response):
    """A ``text/event-stream`` response that stops its source as soon as the client goes away.

    It listens for ``http.disconnect`` while it sends, and closes the event iterator either way,
    so the generation job behind it is cancelled at the scheduler's next chunk.
    """

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None], on_close: Callable[[], None]) -> None:
        self.events = events
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._send_all(receive, send)
        finally:
            self.on_close()

    async def _send_all(self, receive: Receive, send: Send) -> None:
        async with aclosing(self.events) as events, anyio.create_task_group() as group:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(watch)
            try:
                start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                await send(start)
                async for chunk in events:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:  # the client vanished mid-write
                pass
            group.cancel_scope.cancel()
