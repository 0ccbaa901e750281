"""What one server accepts: the bounds that keep a request from taking the server down.

Every bound lives here, so the request schemas, the scheduler, the body-size guard, the
playground's sliders and the ``charloom serve`` flags all read the same numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..errors import CharloomError


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on requests; each is configurable with a ``charloom serve`` flag of the same name."""

    max_length: int = 2000  # new characters per sample
    max_samples: int = 8  # samples per request
    max_prime: int = 4000  # characters of prime (and of the text given to /v1/next)
    max_body: int = 65536  # bytes of request body; larger bodies get 413
    max_active: int = 512  # samples generated at once, all requests together; then 503
    max_connections: int = 512  # open connections (uvicorn's limit_concurrency); then 503
    chunk_ms: float = 20.0  # how long the generation worker steps before it delivers text
    #: Samples one client (one API key, or one address without keys) may have generated at
    #: once; then 429. ``None``: a quarter of ``max_active``, at least 1 (see ``per_client``).
    max_active_per_client: int | None = None

    @property
    def per_client(self) -> int:
        """The samples one client may hold at once: ``max_active_per_client`` if set, else a
        quarter of ``max_active`` (at least 1), so that no client can take every slot."""
        if self.max_active_per_client is not None:
            return self.max_active_per_client
        return max(1, self.max_active // 4)

    def validate(self) -> None:
        """Refuse bounds that could not work, with a :class:`CharloomError` naming the flag."""
        for f in fields(self):
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if f.name == "max_active_per_client" and value is None:
                continue
            if f.name == "chunk_ms":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                if not ok or not 1 <= value <= 1000:
                    raise CharloomError(f"{flag} must be a number in 1..1000, not {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CharloomError(f"{flag} must be an integer >= 1, not {value!r}")
        if self.max_body < 1024:
            raise CharloomError(f"--max-body must be at least 1024 bytes, not {self.max_body}")
        if self.per_client > self.max_active:
            raise CharloomError(
                f"--max-active-per-client ({self.per_client}) must be at most --max-active "
                f"({self.max_active})"
            )

    def to_dict(self) -> dict:
        """The bounds, ``max_active_per_client`` resolved to the number in force."""
        return {**asdict(self), "max_active_per_client": self.per_client}
