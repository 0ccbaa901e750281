"""API keys and the fair share per client, in-process (httpx over ASGI): who gets in, what a
refusal says, what is left open, that keys never show, and that one client cannot take every
slot. The same under a real uvicorn (and TLS, and a browser) is in test_serve_auth_live.py."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="FastAPI and uvicorn are core dependencies")
httpx = pytest.importorskip("httpx", reason="needs httpx (the dev extra)")

from conftest import make_text, tiny_overrides  # noqa: E402

import charloom  # noqa: E402
from charloom.errors import CharloomError  # noqa: E402
from charloom.serve import ServeLimits  # noqa: E402
from charloom.serve.app import create_app  # noqa: E402
from charloom.serve.auth import (  # noqa: E402
    KEYS_ENV,
    UNAUTHORISED,
    ApiKeys,
    bearer_token,
    parse_env_keys,
    read_key_file,
)
from charloom.serve.clients import (  # noqa: E402
    ACCESS_LOGGER,
    MAX_HOLD,
    RETRY_AFTER_S,
    ClientBusy,
    ClientShares,
    hold_for,
)

KEY_A = "alpha-0123456789-abcdefghij"
KEY_B = "bravo-9876543210-zyxwvutsrq"
LIMITS = ServeLimits(max_length=5_000_000, max_active=16, max_active_per_client=4)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("auth") / "run"
    cfg = charloom.preset_config("tiny", **tiny_overrides())
    charloom.train(cfg, text=make_text(), out=out, console=False)
    return charloom.load(out)


def run(app, scenario, client=("127.0.0.1", 123)):
    """Run ``scenario(http)`` against ``app`` from address ``client``, then stop its worker."""

    async def main():
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://charloom") as http:
            try:
                return await scenario(http)
            finally:
                await app.state.scheduler.close()

    return asyncio.run(main())


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# --- who gets in ------------------------------------------------------------------------------
def test_without_a_valid_key_every_call_gets_the_same_401(model):
    app = create_app(model, LIMITS, keys=ApiKeys([KEY_A, KEY_B]))
    body = {"prime": "Th", "length": 5}
    attempts = [
        {},  # no header
        bearer("wrong-key-0123456789"),
        bearer(KEY_A[:-1]),  # all but the last character right
        bearer(KEY_A + "x"),
        {"Authorization": f"Basic {KEY_A}"},  # another scheme
        {"Authorization": KEY_A},  # no scheme
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer " + "k" * 100_000},  # oversized
    ]

    async def scenario(http):
        out = []
        for headers in attempts:
            for method, path, kw in (
                ("POST", "/v1/generate", {"json": body}),
                ("POST", "/v1/next", {"json": {"text": "Th"}}),
                ("GET", "/v1/model", {}),
                ("GET", "/openapi.json", {}),
                ("GET", "/no-such-path", {}),  # a stranger learns nothing about the routes
            ):
                out.append(await http.request(method, path, headers=headers, **kw))
        return out

    for r in run(app, scenario):
        assert r.status_code == 401, (r.request.url, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json() == {"message": UNAUTHORISED, "detail": UNAUTHORISED}
        assert KEY_A not in r.text and KEY_A[:8] not in r.text
    assert app.state.scheduler.stats()["requests_served"] == 0


def test_a_valid_key_gets_in_and_the_open_paths_need_none(model):
    app = create_app(model, LIMITS, keys=ApiKeys([KEY_A, KEY_B]))

    async def scenario(http):
        return {
            "a": await http.post(
                "/v1/generate", json={"prime": "Th", "length": 9}, headers=bearer(KEY_A)
            ),
            "b": await http.post(
                "/v1/next", json={"text": "Th"}, headers={"authorization": f"bearer   {KEY_B}"}
            ),
            "model": await http.get("/v1/model", headers=bearer(KEY_B)),
            "schema": await http.get("/openapi.json", headers=bearer(KEY_A)),
            "health": await http.get("/healthz"),
            "page": await http.get("/"),
            "docs": await http.get("/docs"),
            "health, wrong key": await http.get("/healthz", headers=bearer("nope-nope-nope-nope")),
            "page, POST": await http.post("/"),
        }

    r = run(app, scenario)
    assert r["a"].status_code == 200 and len(r["a"].json()["completions"][0]) == 9
    assert r["b"].status_code == 200 and r["b"].json()["candidates"]
    assert r["model"].status_code == 200 and r["schema"].status_code == 200
    for name in ("health", "page", "docs", "health, wrong key"):
        assert r[name].status_code == 200, name
    assert r["page, POST"].status_code == 401
    # Keys show nowhere: not in the model's description, the health figures or the schema.
    for name in ("model", "health", "schema", "page", "docs"):
        assert KEY_A not in r[name].text and KEY_B not in r[name].text
        assert KEY_A[:6] not in r[name].text


def test_without_keys_nothing_asks_for_one(model):
    app = create_app(model, LIMITS)

    async def scenario(http):
        return await http.post("/v1/generate", json={"length": 3}, headers=bearer("whatever"))

    assert run(app, scenario).status_code == 200


def test_the_key_comparison_checks_every_key_whatever_matches():
    keys = ApiKeys([KEY_A, KEY_B, KEY_A])  # a repeated key counts once
    assert len(keys) == 2
    assert keys.match(KEY_A.encode()) == 0 and keys.match(KEY_B.encode()) == 1
    assert keys.match(KEY_A[:-1].encode()) is None and keys.match(b"") is None
    assert KEY_A not in repr(keys) and KEY_A not in str(keys)
    assert keys.client(0).label == "key alph..." and keys.client(0).id != keys.client(1).id
    h = b"authorization"
    assert bearer_token([(h, b"Bearer abc")]) == b"abc"
    assert bearer_token([(h, b"Bearer abc"), (h, b"Bearer abc")]) is None  # two headers
    assert bearer_token([(h, b"Token abc")]) is None and bearer_token([]) is None


# --- where keys come from, and what is refused ------------------------------------------------
def _key_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_key_file_has_one_key_a_line_with_comments(tmp_path):
    path = _key_file(tmp_path, f"# the team\n{KEY_A}\n\n   {KEY_B}  \r\n# old: none\n")
    warnings = []
    assert read_key_file(path, warnings.append) == [KEY_A, KEY_B]
    assert warnings == []
    keys = ApiKeys.gather(path, environ={KEYS_ENV: f" {KEY_B} ,, {KEY_A}x"})
    assert keys is not None and len(keys) == 3
    assert ApiKeys.gather(None, environ={}) is None


def test_a_key_file_others_can_read_is_served_with_a_warning(tmp_path):
    path = _key_file(tmp_path, KEY_A + "\n", mode=0o644)
    warnings = []
    assert read_key_file(path, warnings.append) == [KEY_A]
    assert len(warnings) == 1 and "chmod 600" in warnings[0] and KEY_A not in warnings[0]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "holds no keys"),
        ("# only a comment\n\n", "holds no keys"),
        (f"{KEY_A}\nshort\n", "line 2: a key must be at least 16 characters"),
        (f"{KEY_A} {KEY_B}\n", "line 1: a key may not contain spaces"),
        (f"{KEY_A}\tcomment\n", "line 1: a key may not contain spaces"),
        ("k\u00e9y-0123456789abcdef\n", "line 1: a key may hold only printable ASCII"),
        ("x" * 600 + "\n", "at most 512 characters"),
    ],
)
def test_bad_key_files_are_refused_in_one_line_without_the_key(tmp_path, text, says):
    path = _key_file(tmp_path, text)
    with pytest.raises(CharloomError) as caught:
        read_key_file(path)
    message = str(caught.value)
    assert says in message and "\n" not in message and str(path) in message
    for word in text.split():
        if len(word) >= 16:
            assert word not in message


def test_missing_unreadable_and_odd_key_files_are_refused(tmp_path):
    with pytest.raises(CharloomError, match="no such file"):
        read_key_file(tmp_path / "absent")
    with pytest.raises(CharloomError, match="not a file"):
        read_key_file(tmp_path)
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00key")
    with pytest.raises(CharloomError, match="not UTF-8"):
        read_key_file(tmp_path / "bin")
    if os.geteuid() != 0:  # root reads anything
        locked = _key_file(tmp_path, KEY_A, mode=0o000)
        with pytest.raises(CharloomError, match="permission denied"):
            read_key_file(locked)


def test_the_environment_variable_takes_comma_separated_keys():
    assert parse_env_keys(f"{KEY_A},{KEY_B}") == [KEY_A, KEY_B]
    with pytest.raises(CharloomError, match="set but holds no keys"):
        parse_env_keys(" , ")
    with pytest.raises(CharloomError, match=f"{KEYS_ENV}, key 2: a key may not contain"):
        parse_env_keys(f"{KEY_A},{KEY_B} extra")


# --- the fair share ---------------------------------------------------------------------------
def test_shares_are_counted_per_client_and_given_back():
    shares = ClientShares(per_client=4)
    a = shares.take("a", 3)
    with pytest.raises(ClientBusy, match="at most 4 per client"):
        shares.take("a", 2)
    b = shares.take("b", 4)
    a.release()
    a.release()  # twice is once
    assert shares.holding("a") == 0 and shares.holding("b") == 4
    with shares.take("a", 4):
        assert shares.holding("a") == 4
    b.release()
    assert shares.holding("a") == shares.holding("b") == 0


async def _hold_three_samples(app, http, headers: dict) -> asyncio.Task:
    """Start a long request of 3 samples (in a task: the ASGI transport answers only at the
    end) and wait until the worker steps it."""
    body = {"prime": "Th", "length": 5_000_000, "num_samples": 3}
    task = asyncio.create_task(http.post("/v1/generate", json=body, headers=headers))
    deadline = time.monotonic() + 30
    while app.state.scheduler.stats()["active_samples"] < 3:
        assert not task.done() and time.monotonic() < deadline, "the long request never ran"
        await asyncio.sleep(0.005)
    return task


def _full_client_scenario(app, headers_a: dict, headers_b: dict):
    async def scenario(http):
        long = await _hold_three_samples(app, http, headers_a)
        over = await http.post(
            "/v1/generate", json={"length": 5, "num_samples": 2}, headers=headers_a
        )
        over_stream = await http.post(
            "/v1/generate", json={"length": 5, "num_samples": 2, "stream": True}, headers=headers_a
        )
        over_next = await http.post("/v1/next", json={"text": "Th"}, headers=headers_a)
        fits = await http.post("/v1/generate", json={"length": 5}, headers=headers_a)
        other = await http.post(
            "/v1/generate", json={"length": 5, "num_samples": 4}, headers=headers_b
        )
        long.cancel()  # the client goes away: its share comes back
        deadline = time.monotonic() + 10
        while app.state.shares.holding("key 0") and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        again = await http.post(
            "/v1/generate", json={"length": 5, "num_samples": 4}, headers=headers_a
        )
        return over, over_stream, over_next, fits, other, again

    return scenario


def test_one_key_past_its_share_gets_429_while_another_key_is_served(model):
    app = create_app(model, LIMITS, keys=ApiKeys([KEY_A, KEY_B]))
    over, over_stream, over_next, fits, other, again = run(
        app, _full_client_scenario(app, bearer(KEY_A), bearer(KEY_B))
    )
    # 3 of key A's 4 samples are running: 2 more are refused, 1 more fits.
    assert over.status_code == 429 and over.headers["retry-after"] == "1"
    assert "at most 4 per client" in over.json()["message"] and KEY_A not in over.text
    assert over_stream.status_code == 429  # refused before the stream starts
    assert over_next.status_code == 200  # the share had room for one
    assert fits.status_code == 200
    assert other.status_code == 200  # key B is served whatever key A holds
    assert again.status_code == 200
    assert app.state.shares.holding("key 0") == app.state.shares.holding("key 1") == 0


def test_without_keys_the_share_is_per_address(model):
    app = create_app(model, ServeLimits(max_length=5_000_000, max_active_per_client=3))

    async def scenario(http):
        long = await _hold_three_samples(app, http, {})
        mine = await http.post("/v1/generate", json={"length": 5})
        # A full share is refused before the body is read: no 422 for this one, no 413 either.
        unread = await http.post("/v1/next", content=b"{not json" + b" " * 100_000)
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 5))
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as other:
            theirs = await other.post("/v1/generate", json={"length": 5})
        long.cancel()
        return mine, unread, theirs

    mine, unread, theirs = run(app, scenario)
    assert mine.status_code == 429 and theirs.status_code == 200
    assert unread.status_code == 429 and unread.headers["retry-after"] == "1"
    # A refused request's small body is read, so its connection serves the client's next
    # request; one past --max-body is left unread, and its connection closed.
    assert mine.headers.get("connection") != "close"
    assert unread.headers["connection"] == "close"


def test_a_client_with_many_refusals_waiting_is_held_back_longer():
    assert hold_for(0, 4) == hold_for(3, 4) == RETRY_AFTER_S  # a request or two past its share
    assert hold_for(4, 4) == 2 * RETRY_AFTER_S
    assert hold_for(384, 128) == 4 * RETRY_AFTER_S  # the flood: 384 connections refused
    assert hold_for(10**6, 1) == MAX_HOLD * RETRY_AFTER_S


def test_refusals_held_back_together_say_so_in_retry_after(model):
    limits = ServeLimits(max_length=5_000_000, max_active=16, max_active_per_client=3)
    app = create_app(model, limits, keys=ApiKeys([KEY_A, KEY_B]))

    async def scenario(http):
        long = await _hold_three_samples(app, http, bearer(KEY_A))
        refused = await asyncio.gather(
            *(
                http.post("/v1/generate", json={"length": 5}, headers=bearer(KEY_A))
                for _ in range(7)
            )
        )
        theirs = await http.post("/v1/generate", json={"length": 5}, headers=bearer(KEY_B))
        long.cancel()
        return refused, theirs

    refused, theirs = run(app, scenario)
    assert all(r.status_code == 429 for r in refused) and theirs.status_code == 200
    # 3 waiting already: 2 s; 6 waiting: 3 s (their order is the order they came in)
    assert sorted(int(r.headers["retry-after"]) for r in refused) == [1, 1, 1, 2, 2, 2, 3]


def test_the_default_share_is_a_quarter_of_max_active():
    assert ServeLimits().per_client == 128
    assert ServeLimits(max_active=6).per_client == 1
    assert (
        ServeLimits(max_active=6, max_active_per_client=6).to_dict()["max_active_per_client"] == 6
    )
    with pytest.raises(CharloomError, match="--max-active-per-client"):
        ServeLimits(max_active=6, max_active_per_client=7).validate()
    with pytest.raises(CharloomError, match="--max-active-per-client"):
        ServeLimits(max_active_per_client=0).validate()


# --- the access log ---------------------------------------------------------------------------
def test_the_access_log_names_a_key_by_its_first_four_characters(model, caplog):
    app = create_app(model, LIMITS, keys=ApiKeys([KEY_A]), access_log=True)

    async def scenario(http):
        await http.post("/v1/generate", json={"length": 3}, headers=bearer(KEY_A))
        await http.get("/v1/model", headers=bearer(KEY_B))

    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        run(app, scenario)
    lines = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(lines) == 2
    assert "key alph..." in lines[0] and '"POST /v1/generate HTTP/1.1" 200' in lines[0]
    assert lines[1].endswith('"GET /v1/model HTTP/1.1" 401')
    assert all(KEY_A[:5] not in line and KEY_B[:5] not in line for line in lines)
