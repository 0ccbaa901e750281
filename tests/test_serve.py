"""The HTTP API in-process (httpx over ASGI, no sockets): answers, validation, streaming,
cancellation, scheduling. The same app under a real uvicorn is tested in test_serve_live.py."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="FastAPI and uvicorn are core dependencies")
httpx = pytest.importorskip("httpx", reason="needs httpx (the dev extra)")

from conftest import make_text, tiny_overrides  # noqa: E402

import charloom  # noqa: E402
from charloom.charmodel import CharModel  # noqa: E402
from charloom.model import CharRNN, ModelConfig  # noqa: E402
from charloom.serve import ServeLimits  # noqa: E402
from charloom.serve.app import create_app  # noqa: E402
from charloom.vocab import Vocab  # noqa: E402

LIMITS = ServeLimits(max_length=500, max_samples=4, max_prime=200, max_body=4096)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> CharModel:
    out = tmp_path_factory.mktemp("serve") / "run"
    cfg = charloom.preset_config("tiny", **tiny_overrides())
    charloom.train(cfg, text=make_text(), out=out, console=False)
    return charloom.load(out)


@pytest.fixture(scope="module")
def app(model):
    return create_app(model, LIMITS)


def run(app, scenario):
    """Run ``scenario(client)`` against ``app`` on a fresh event loop, then stop its worker."""

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://charloom") as client:
            try:
                return await scenario(client)
            finally:
                await app.state.scheduler.close()

    return asyncio.run(main())


def post(app, path: str, **kwargs) -> httpx.Response:
    async def scenario(client):
        return await client.post(path, **kwargs)

    return run(app, scenario)


def events(body: str) -> list[tuple[str, dict]]:
    """Parse a server-sent-events body into (event, data) pairs."""
    out = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


# --- answers --------------------------------------------------------------------------------
def test_generate_returns_prime_and_exactly_length_new_characters(app):
    r = post(app, "/v1/generate", json={"prime": "The ", "length": 37, "num_samples": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["texts"]) == 3
    for text, completion in zip(body["texts"], body["completions"]):
        assert text == "The " + completion and len(completion) == 37


def test_same_seed_same_text_as_the_python_api(app, model):
    body = {"prime": "Th", "length": 80, "seed": 7, "temperature": 0.9, "top_k": 10}
    a = post(app, "/v1/generate", json=body).json()["texts"]
    b = post(app, "/v1/generate", json=body).json()["texts"]
    assert a == b == model.sample("Th", 80, temperature=0.9, top_k=10, seed=7)
    greedy = post(app, "/v1/generate", json={"prime": "Th", "length": 40, "greedy": True})
    assert greedy.json()["texts"] == model.sample("Th", 40, greedy=True)


def test_stream_sends_start_text_and_done_events(app):
    body = {"prime": "Th", "length": 300, "seed": 3, "num_samples": 2}
    plain = post(app, "/v1/generate", json=body).json()
    r = post(app, "/v1/generate", json={**body, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    evs = events(r.text)
    assert evs[0] == ("start", {"prime": "Th", "num_samples": 2})
    assert evs[-1][0] == "done"
    streamed = ["", ""]
    for name, data in evs[1:-1]:
        assert name == "text"
        streamed[data["index"]] += data["text"]
    assert streamed == evs[-1][1]["completions"] == plain["completions"]


def test_length_zero_gives_the_prime_back(app):
    r = post(app, "/v1/generate", json={"prime": "Th", "length": 0})
    assert r.json()["texts"] == ["Th"]


def test_model_info_and_health(app, model):
    async def scenario(client):
        return (await client.get("/v1/model")).json(), (await client.get("/healthz")).json()

    info, health = run(app, scenario)
    assert info["model"] == model.config.to_dict()
    assert info["vocab"]["size"] == model.vocab.size
    assert info["vocab"]["chars"] == "".join(model.vocab.chars)
    assert info["training"]["iterations"] == 10
    assert info["limits"]["max_length"] == 500
    assert info["defaults"]["length"] == 200
    assert health["status"] == "ok" and health["active_samples"] == 0


def test_next_gives_the_likeliest_characters_with_their_probabilities(app, model):
    r = post(app, "/v1/next", json={"text": "The quick", "top": 5, "temperature": 1.0})
    assert r.status_code == 200, r.text
    cands = r.json()["candidates"]
    assert len(cands) == 5
    probs = [c["prob"] for c in cands]
    assert probs == sorted(probs, reverse=True)
    ids = torch.from_numpy(model.vocab.encode("The quick").copy()).long()[None]
    with torch.no_grad():
        expected = torch.softmax(model.model(ids)[0][0, -1], -1)
    for c in cands:
        assert c["char"] == model.vocab.chars[c["id"]]
        assert c["prob"] == pytest.approx(float(expected[c["id"]]), rel=1e-4)
    top3 = post(app, "/v1/next", json={"text": "Th", "top": 10, "top_k": 3}).json()
    assert len(top3["candidates"]) == 3
    assert sum(c["prob"] for c in top3["candidates"]) == pytest.approx(1.0, abs=1e-5)


def test_pages_are_self_contained(app):
    async def scenario(client):
        return [await client.get(p) for p in ("/", "/docs", "/openapi.json")]

    page, docs, schema = run(app, scenario)
    for r in (page, docs):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "<script src" not in r.text and "https://" not in r.text
        assert "connect-src 'self'" in r.headers["content-security-policy"]
    for element in ('id="prime"', 'id="temperature"', 'id="top_k"', 'id="top_p"', 'id="length"'):
        assert element in page.text
    for element in ('id="seed"', 'id="generate"', 'id="interactive"', 'id="candidates"'):
        assert element in page.text
    props = schema.json()["components"]["schemas"]["GenerateRequest"]["properties"]
    assert props["length"]["maximum"] == 500 and props["num_samples"]["maximum"] == 4


# --- validation: every field, 422 naming it -------------------------------------------------
BAD_GENERATE = [
    ("prime", ""),
    ("prime", "T" * 201),
    ("prime", 5),
    ("prime", None),
    ("length", -1),
    ("length", 501),
    ("length", "20"),
    ("length", 2.5),
    ("length", True),
    ("temperature", 0),
    ("temperature", -1.0),
    ("temperature", 11),
    ("temperature", "hot"),
    ("top_k", 0),
    ("top_k", 10_000),
    ("top_k", 1.5),
    ("top_p", 0),
    ("top_p", 1.01),
    ("top_p", "0.5"),
    ("greedy", "yes"),
    ("seed", -1),
    ("seed", 2**64),
    ("seed", "1"),
    ("num_samples", 0),
    ("num_samples", 5),
    ("stream", "true"),
    ("stream", 1),
]


@pytest.mark.parametrize(("field", "value"), BAD_GENERATE)
def test_out_of_range_or_mistyped_fields_are_422_naming_the_field(app, field, value):
    r = post(app, "/v1/generate", json={field: value})
    assert r.status_code == 422, (field, value, r.text)
    body = r.json()
    assert body["message"].startswith(f"{field}: ")
    assert body["detail"][0]["field"] == field


@pytest.mark.parametrize(
    ("field", "value"),
    [("text", ""), ("text", "T" * 201), ("text", 3), ("top", 0), ("top", 10_000), ("top_p", 2)],
)
def test_next_validates_its_fields_too(app, field, value):
    r = post(app, "/v1/next", json={"text": "Th", field: value})
    assert r.status_code == 422
    assert r.json()["message"].startswith(f"{field}: ")


def test_unknown_fields_are_refused_with_the_list_of_fields(app):
    r = post(app, "/v1/generate", json={"prime": "Th", "temprature": 0.5})
    assert r.status_code == 422
    assert r.json()["message"].startswith("temprature: unknown field (the fields are: prime,")
    assert post(app, "/v1/next", json={"text": "Th", "prime": "x"}).status_code == 422


def test_prime_characters_outside_the_vocabulary_are_listed(app):
    r = post(app, "/v1/generate", json={"prime": "Th€ é€ 😀"})
    assert r.status_code == 422
    body = r.json()
    assert body["message"].startswith("prime: 3 character(s) outside the model's vocabulary")
    assert sorted(body["detail"][0]["unknown"]) == sorted(["€", "é", "😀"])
    r = post(app, "/v1/next", json={"text": "ü"})
    assert r.status_code == 422 and "'ü'" in r.json()["message"]


@pytest.mark.parametrize(
    "content",
    [b'{"prime": "Th", ', b"[1, 2]", b'"Th"', b"", b'{"temperature": NaN}', b"\xff\xfe"],
)
def test_malformed_bodies_are_422(app, content):
    r = post(app, "/v1/generate", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["message"]


def test_oversized_bodies_are_413_with_or_without_a_length(app):
    big = json.dumps({"prime": "T" * 10_000}).encode()
    r = post(app, "/v1/generate", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "4096 bytes" in r.json()["message"]

    async def chunks():
        yield b'{"prime": "'
        for _ in range(10):
            yield b"T" * 1000
        yield b'"}'

    r = post(app, "/v1/generate", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


# --- scheduling ---------------------------------------------------------------------------------
def test_a_long_request_does_not_stall_a_short_one(model):
    app = create_app(model, ServeLimits(max_length=100_000))

    async def scenario(client):
        long = asyncio.create_task(
            client.post("/v1/generate", json={"prime": "Th", "length": 30_000, "num_samples": 4})
        )
        while app.state.scheduler.stats()["active_samples"] < 4:
            await asyncio.sleep(0.005)
        short = await client.post("/v1/generate", json={"prime": "Th", "length": 10})
        still_running = not long.done() and app.state.scheduler.stats()["active_requests"] >= 1
        long.cancel()
        return short, still_running

    short, still_running = run(app, scenario)
    assert short.status_code == 200 and len(short.json()["texts"][0]) == 12
    assert still_running


def test_requests_with_different_settings_share_the_batch_and_keep_their_own(app, model):
    bodies = [
        {"prime": "Th", "length": 120, "seed": 11, "temperature": 0.5},
        {"prime": "The", "length": 60, "seed": 12, "top_p": 0.9, "num_samples": 2},
        {"prime": "T", "length": 90, "greedy": True},
        {"prime": "Th", "length": 150, "top_k": 5},
        {"prime": "Th", "length": 150, "top_k": 5, "num_samples": 3},
    ]

    async def scenario(client):
        return await asyncio.gather(*(client.post("/v1/generate", json=b) for b in bodies))

    answers = [r.json() for r in run(app, scenario)]
    assert answers[0]["texts"] == model.sample("Th", 120, temperature=0.5, seed=11)
    assert answers[1]["texts"] == model.sample("The", 60, top_p=0.9, seed=12, num_samples=2)
    assert answers[2]["texts"] == model.sample("T", 90, greedy=True)
    for body, answer in zip(bodies, answers):
        assert [len(t) for t in answer["texts"]] == [
            len(body["prime"]) + body["length"]
        ] * body.get("num_samples", 1)


def test_a_full_server_answers_503_and_recovers(model):
    app = create_app(model, ServeLimits(max_active=4, max_length=100_000, max_active_per_client=4))

    async def scenario(client):
        long = asyncio.create_task(
            client.post("/v1/generate", json={"prime": "Th", "length": 50_000, "num_samples": 3})
        )
        while app.state.scheduler.stats()["active_samples"] < 3:
            await asyncio.sleep(0.005)
        # From another address: this client's own share (1 of 4) is not what refuses it.
        transport = httpx.ASGITransport(app=app, client=("10.0.0.2", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://charloom") as other:
            refused = await other.post("/v1/generate", json={"length": 5, "num_samples": 2})
            fits = await other.post("/v1/generate", json={"length": 5})
            streamed = await other.post(
                "/v1/generate", json={"length": 5, "stream": True, "num_samples": 2}
            )
        long.cancel()
        return refused, fits, streamed

    refused, fits, streamed = run(app, scenario)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "try again" in refused.json()["message"]
    assert fits.status_code == 200
    assert streamed.status_code == 503  # refused before the stream starts, not inside it


def _asgi_stream_then_hang_up(app, body: dict, hang_up_after: int, fail_send: bool = False):
    """Drive the ASGI app directly: read ``hang_up_after`` body chunks, then disconnect
    (``fail_send``: the connection is gone before the response even starts)."""

    async def main():
        disconnect = asyncio.Event()
        sent = False
        chunks: list[bytes] = []

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {
                    "type": "http.request",
                    "body": json.dumps(body).encode(),
                    "more_body": False,
                }
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if fail_send:
                raise OSError("connection reset")
            if message["type"] == "http.response.body" and message.get("body"):
                chunks.append(message["body"])
                if len(chunks) >= hang_up_after:
                    disconnect.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/generate",
            "raw_path": b"/v1/generate",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"host", b"charloom")],
            "client": ("127.0.0.1", 1234),
            "server": ("127.0.0.1", 80),
        }
        scheduler = app.state.scheduler
        try:
            await asyncio.wait_for(app(scope, receive, send), 10)
            # The job is dropped at the worker's next chunk boundary.
            for _ in range(200):
                if scheduler.stats()["active_samples"] == 0:
                    break
                await asyncio.sleep(0.01)
            return chunks, scheduler.stats()
        finally:
            await scheduler.close()

    return asyncio.run(main())


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_generation_stops_when_the_client_goes_away(model, worker):
    app = create_app(model, ServeLimits(max_length=100_000, max_samples=8), worker=worker)
    before = app.state.scheduler.chars_generated
    chunks, stats = _asgi_stream_then_hang_up(
        app, {"prime": "Th", "length": 100_000, "num_samples": 8, "stream": True}, hang_up_after=3
    )
    assert b"event: text" in b"".join(chunks)
    assert stats["active_samples"] == 0 and stats["active_requests"] == 0
    assert stats["admitted_samples"] == 0  # its place is free again
    made = app.state.scheduler.chars_generated - before
    assert made < 8 * 100_000 / 10  # stopped long before the end


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_a_connection_lost_before_the_stream_starts_frees_its_place(model, worker):
    app = create_app(model, ServeLimits(max_length=100_000, max_samples=8), worker=worker)
    body = {"prime": "Th", "length": 100_000, "num_samples": 8, "stream": True}
    chunks, stats = _asgi_stream_then_hang_up(app, body, hang_up_after=1, fail_send=True)
    assert chunks == []
    assert stats["active_samples"] == 0 and stats["admitted_samples"] == 0


def test_a_flood_of_long_primes_does_not_stop_a_stream(model):
    app = create_app(model, ServeLimits(max_length=3000, max_prime=4000))
    text = (make_text(100) * 2)[:4000]

    async def scenario(client):
        stream = asyncio.create_task(
            client.post("/v1/generate", json={"prime": "Th", "length": 3000, "stream": True})
        )
        nexts = await asyncio.gather(
            *(client.post("/v1/next", json={"text": text, "top": 3}) for _ in range(24))
        )
        return await stream, nexts

    stream, nexts = run(app, scenario)
    assert all(r.status_code == 200 and len(r.json()["candidates"]) == 3 for r in nexts)
    assert stream.status_code == 200 and events(stream.text)[-1][0] == "done"


def test_a_model_failure_is_a_500_and_the_server_keeps_serving(model):
    app = create_app(model, LIMITS)
    scheduler = app.state.scheduler

    class Broken(torch.nn.Module):
        head = model.model.head

        def forward(self, ids, state=None):
            raise RuntimeError("simulated failure")

    def broken_start(prime_ids, rows):
        raise RuntimeError("simulated failure")

    async def scenario(client):
        scheduler.model, working_start = Broken(), scheduler.stepper.start
        scheduler.stepper.start = broken_start  # generation primes through the stepper
        failed = await client.post("/v1/generate", json={"length": 5})
        failed_next = await client.post("/v1/next", json={"text": "Th"})
        scheduler.model, scheduler.stepper.start = model.model, working_start
        ok = await client.post("/v1/generate", json={"length": 5})
        return failed, failed_next, ok

    failed, failed_next, ok = run(app, scenario)
    assert failed.status_code == 500 and "simulated failure" in failed.json()["message"]
    assert failed_next.status_code == 500
    assert ok.status_code == 200


def test_a_failure_while_streaming_is_an_error_event(model):
    app = create_app(model, LIMITS)
    stepper = app.state.scheduler.stepper
    engine = stepper.generator

    class FailsWhileStepping:  # the prime works (it runs on the model); the steps do not
        def run(self, state, logits, uniforms, settings):
            raise RuntimeError("out of memory, say")

    async def scenario(client):
        # A failure of the reference engine itself (a compiled one would be given up for it).
        named, asked = stepper.engine, stepper.asked
        stepper.generator, stepper.engine, stepper.asked = FailsWhileStepping(), "torch", "torch"
        body = {"length": 50, "stream": True}
        failed = await client.post("/v1/generate", json=body)
        stepper.generator, stepper.engine, stepper.asked = engine, named, asked
        return failed, await client.post("/v1/generate", json=body)

    failed, ok = run(app, scenario)
    assert failed.status_code == 200  # the stream had started
    assert events(failed.text)[-1] == (
        "error",
        {"message": "generation failed: out of memory, say"},
    )
    assert events(ok.text)[-1][0] == "done"


# --- other vocabularies -------------------------------------------------------------------------
def _untrained(vocab: Vocab, ascii: bool = False) -> CharModel:
    torch.manual_seed(0)
    net = CharRNN(ModelConfig(vocab_size=vocab.size, embed=8, hidden=16, layers=1)).eval()
    return CharModel(net, vocab, ascii, {}, Path("untrained/best"))


def test_bytes_vocabulary_counts_characters_and_accepts_any_prime():
    model = _untrained(Vocab.build("bytes"))
    app = create_app(model, LIMITS)
    r = post(app, "/v1/generate", json={"prime": "日本", "length": 25, "temperature": 2.0})
    assert r.status_code == 200
    (text,) = r.json()["texts"]
    assert text.startswith("日本") and len(text) == 2 + 25
    cands = post(app, "/v1/next", json={"text": "é", "top": 256}).json()["candidates"]
    assert {c["char"] for c in cands if c["id"] >= 128} == {None}
    assert all(c["char"] == chr(c["id"]) for c in cands if c["id"] < 128)


def test_an_ascii_model_normalises_the_prime():
    model = _untrained(Vocab.build("printable"), ascii=True)
    app = create_app(model, LIMITS)
    r = post(app, "/v1/generate", json={"prime": "Café", "length": 5})
    assert r.status_code == 200 and r.json()["prime"] == "Cafe"
    assert r.json()["texts"][0].startswith("Cafe")


def test_limits_are_checked():
    with pytest.raises(charloom.CharloomError, match="--max-length"):
        ServeLimits(max_length=0).validate()
    with pytest.raises(charloom.CharloomError, match="--max-body"):
        ServeLimits(max_body=10).validate()
    assert math.isfinite(ServeLimits().chunk_ms)


def test_next_reads_around_unknown_characters_on_request(app):
    refused = post(app, "/v1/next", json={"text": "Th€e"})
    assert refused.status_code == 422 and '"unknown": "skip"' in refused.json()["message"]
    got = post(app, "/v1/next", json={"text": "Th€e", "unknown": "skip", "top": 5})
    want = post(app, "/v1/next", json={"text": "The", "top": 5})
    assert got.status_code == want.status_code == 200
    assert got.json()["skipped"] == 1 and want.json()["skipped"] == 0
    assert got.json()["candidates"] == want.json()["candidates"]
    bad = post(app, "/v1/next", json={"text": "The", "unknown": "drop"})
    assert bad.status_code == 422 and bad.json()["message"].startswith("unknown:")
