"""API keys: where they come from, how they are checked, and the guard in front of the app.

Keys come from ``--api-key-file FILE`` (one key per line; blank lines and lines starting with
``#`` are skipped) and from the ``CHARLOOM_API_KEYS`` environment variable (keys separated by
commas); both may be given, and every key from either is accepted. A key is 16 to 512 printable
ASCII characters with no whitespace; anything else is refused at start-up with a line naming
where the key is (file and line, or the variable and the item), never the key itself.

A request proves itself with ``Authorization: Bearer KEY``. The key it brings is hashed and
compared with every key's hash by :func:`hmac.compare_digest`, all of them every time, so the
time an answer takes does not depend on how much of a key was right, nor on which key matched.
Anything else - no header, another scheme, a wrong key, two headers, an oversized one - gets the
same 401 with ``WWW-Authenticate: Bearer`` and one message that does not say which part was
wrong.

What stays open: ``/healthz`` (liveness and load figures; nothing about the model), and the two
HTML pages, ``/`` and ``/docs``. Those are the package's own static files, the same for every
server: each asks for the key once, keeps it in the tab's ``sessionStorage`` and sends it with
every call it makes (``/v1/model``, ``/v1/generate``, ``/v1/next``, ``/openapi.json``), which all
need it, as does every other path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import CharloomError
from .clients import SCOPE_KEY, Client

#: The environment variable that may hold keys, and what separates them there.
KEYS_ENV = "CHARLOOM_API_KEYS"
KEYS_ENV_SEPARATOR = ","

MIN_KEY_LENGTH = 16
MAX_KEY_LENGTH = 512
MAX_KEY_FILE_BYTES = 1 << 20
#: What a client is told whatever was wrong with its credentials.
UNAUTHORISED = "a valid API key is required: send it as 'Authorization: Bearer KEY'"
#: Paths served without a key (GET and HEAD only); everything else needs one.
OPEN_PATHS = frozenset({"/healthz", "/", "/docs"})
KEY_HINT = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class ApiKeys:
    """The keys a server accepts. Its ``repr`` and ``str`` never show them."""

    def __init__(self, keys: Iterable[str]) -> None:
        unique = list(dict.fromkeys(keys))
        if not unique:
            raise CharloomError("no API keys given")
        for n, key in enumerate(unique, 1):
            check_key(key, f"key {n}")
        self._digests = [_digest(key.encode("ascii")) for key in unique]
        self._labels = [key[:4] + "..." for key in unique]

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self)} keys)"

    __str__ = __repr__

    def match(self, token: bytes) -> int | None:
        """The index of the key ``token`` is, or ``None``; the same work whatever it is."""
        digest = _digest(token)
        found = None
        for n, ref in enumerate(self._digests):
            if hmac.compare_digest(digest, ref) and found is None:
                found = n
        return found

    def client(self, n: int) -> Client:
        """The client that key ``n`` makes: counted by the key's place, shown by 4 characters."""
        return Client(f"key {n}", f"key {self._labels[n]}")

    @classmethod
    def gather(
        cls,
        key_file: str | os.PathLike | None = None,
        environ: dict[str, str] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> ApiKeys | None:
        """The keys from ``key_file`` and from ``CHARLOOM_API_KEYS`` in ``environ`` (the
        process's environment if ``None``); ``None`` when neither gives any."""
        env = os.environ if environ is None else environ
        keys: list[str] = []
        if key_file is not None:
            keys += read_key_file(key_file, warn)
        if KEYS_ENV in env:
            keys += parse_env_keys(env[KEYS_ENV])
        return cls(keys) if keys else None


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def check_key(key: str, where: str) -> None:
    """Refuse a key that is too short, too long, or holds whitespace or non-ASCII characters,
    naming ``where`` it is (never the key)."""
    if any(c.isspace() for c in key):
        raise CharloomError(f"{where}: a key may not contain spaces or other whitespace")
    if not all("!" <= c <= "~" for c in key):
        raise CharloomError(f"{where}: a key may hold only printable ASCII characters")
    if len(key) < MIN_KEY_LENGTH:
        raise CharloomError(
            f"{where}: a key must be at least {MIN_KEY_LENGTH} characters ({KEY_HINT})"
        )
    if len(key) > MAX_KEY_LENGTH:
        raise CharloomError(f"{where}: a key must be at most {MAX_KEY_LENGTH} characters")


def read_key_file(path: str | os.PathLike, warn: Callable[[str], None] | None = None) -> list[str]:
    """The keys in ``path``: one a line, surrounding whitespace dropped, blank lines and
    ``#`` comment lines skipped. A file others may read is served, with a warning."""
    shown = f"--api-key-file {path}"
    file = Path(path)
    try:
        info = file.stat()
        if not stat.S_ISREG(info.st_mode):
            raise CharloomError(f"{shown}: not a file")
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise CharloomError(f"{shown}: larger than 1 MB, which is no key file")
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CharloomError(f"{shown}: no such file") from None
    except PermissionError:
        raise CharloomError(f"{shown}: permission denied (cannot read it)") from None
    except UnicodeDecodeError:
        raise CharloomError(f"{shown}: not UTF-8 text") from None
    except OSError as exc:
        raise CharloomError(f"{shown}: cannot read it ({exc.strerror or exc})") from None
    if info.st_mode & (stat.S_IRGRP | stat.S_IROTH) and warn is not None:
        warn(
            f"charloom: warning: {path} can be read by other users of this machine "
            f"(chmod 600 {path})"
        )
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        key = line.strip()
        if key and not key.startswith("#"):
            check_key(key, f"{shown}, line {n}")
            keys.append(key)
    if not keys:
        raise CharloomError(f"{shown}: holds no keys (one key per line; # starts a comment)")
    return keys


def parse_env_keys(value: str) -> list[str]:
    """The keys in the value of ``CHARLOOM_API_KEYS``: comma-separated, surrounding spaces
    dropped. Set but empty is an error (an empty variable must not silently mean no keys)."""
    keys = []
    for n, item in enumerate(value.split(KEYS_ENV_SEPARATOR), 1):
        key = item.strip()
        if key:
            check_key(key, f"{KEYS_ENV}, key {n}")
            keys.append(key)
    if not keys:
        raise CharloomError(
            f"{KEYS_ENV} is set but holds no keys (separate keys with commas, or unset it)"
        )
    return keys


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of the one ``Authorization: Bearer TOKEN`` header, or ``None`` if there is
    none, more than one, another scheme, or a value longer than any key."""
    values = [v for k, v in headers if k.lower() == b"authorization"]
    if len(values) != 1 or len(values[0]) > MAX_KEY_LENGTH + 16:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token


class KeyAuth:
    """ASGI middleware: let a request through only with a valid key (or to an open page), and
    record which key it was for the fair share and the access log."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or ()
        token = bearer_token(headers)
        found = None if token is None else self.keys.match(token)
        if found is not None:
            scope[SCOPE_KEY] = self.keys.client(found)
        elif not (scope.get("method") in ("GET", "HEAD") and scope.get("path") in OPEN_PATHS):
            await self._refuse(scope, receive, send, headers)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, headers) -> None:
        extra = {"WWW-Authenticate": 'Bearer realm="charloom"'}
        if any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in headers):
            extra["Connection"] = "close"  # its body is left unread
        response = JSONResponse(
            {"message": UNAUTHORISED, "detail": UNAUTHORISED}, status_code=401, headers=extra
        )
        await response(scope, receive, send)
