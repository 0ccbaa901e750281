"""The generation worker in a process of its own (serve/process.py, ``charloom serve``'s
default): the same text as in one process, streaming, /v1/next, a child that dies, bad settings
(cancellation: test_serve.py, with either worker). In-process apps (httpx over ASGI) with
``worker="process"``; the live tests of test_serve_live.py run it under ``charloom serve``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

pytest.importorskip("fastapi", reason="FastAPI and uvicorn are core dependencies")
httpx = pytest.importorskip("httpx", reason="needs httpx (the dev extra)")

from conftest import make_text, tiny_overrides  # noqa: E402

import charloom  # noqa: E402
from charloom.commands import main  # noqa: E402
from charloom.errors import CharloomError  # noqa: E402
from charloom.serve import ServeLimits  # noqa: E402
from charloom.serve.app import create_app  # noqa: E402
from charloom.serve.process import ProcessScheduler  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve-process") / "run"
    charloom.train(
        charloom.preset_config("tiny", **tiny_overrides()), text=make_text(), out=out, console=False
    )
    return out


@pytest.fixture(scope="module")
def model(run_dir):
    return charloom.load(run_dir)


def serve(app, scenario):
    """``scenario(client)`` against ``app`` on a fresh event loop; the worker stopped after."""

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://charloom") as client:
            try:
                return await scenario(client)
            finally:
                await app.state.scheduler.close()

    return asyncio.run(go())


async def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def texts_of(response) -> list[str]:
    if not response.headers["content-type"].startswith("text/event-stream"):
        return response.json()["texts"]
    blocks = [b for b in response.text.split("\n\n") if b.strip()]
    event, data = (line.split(": ", 1)[1] for line in blocks[-1].split("\n"))
    assert event == "done", data
    return json.loads(data)["texts"]


def test_the_child_gives_the_text_one_process_gives(model):
    app = create_app(model, ServeLimits(max_length=2000, chunk_ms=2), worker="process")
    assert isinstance(app.state.scheduler, ProcessScheduler)
    bodies = [
        {"prime": "Th", "length": 400, "seed": 7},
        {"prime": "The ", "length": 300, "seed": 8, "stream": True, "temperature": 1.1},
        {"prime": "a", "length": 200, "seed": 9, "num_samples": 3, "top_k": 5},
        {"prime": "Th", "length": 100, "seed": 10, "greedy": True},
    ]

    async def scenario(client):
        beside = asyncio.create_task(  # an unseeded stream running alongside
            client.post("/v1/generate", json={"prime": "t", "length": 2000, "stream": True})
        )
        answers = []
        for body in bodies:
            answers.append(asyncio.create_task(client.post("/v1/generate", json=body)))
            await asyncio.sleep(0.005)
        answers = await asyncio.gather(*answers)
        nxt = await client.post("/v1/next", json={"text": "Th", "top": 5})
        beside = await beside
        health = (await client.get("/healthz")).json()
        return answers, beside, nxt, health

    answers, beside, nxt, health = serve(app, scenario)
    keys = ("temperature", "top_k", "greedy", "num_samples", "seed")
    for body, answer in zip(bodies, answers):
        assert answer.status_code == 200, answer.text
        expected = model.sample(
            body["prime"], body["length"], **{k: body[k] for k in keys if k in body}
        )
        assert texts_of(answer) == expected, body
    assert beside.status_code == 200 and len(texts_of(beside)[0]) == 1 + 2000
    assert nxt.status_code == 200
    probs = [c["prob"] for c in nxt.json()["candidates"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True)
    assert health["requests_served"] == len(bodies) + 2  # the stream and /v1/next too
    assert health["chars_generated"] >= 400 + 300 + 600 + 100 + 2000
    assert app.state.scheduler.engine in ("torch", "numba")


def test_a_child_that_dies_fails_its_requests_and_the_next_one_starts_anew(model):
    app = create_app(model, ServeLimits(max_length=20000), worker="process")
    scheduler = app.state.scheduler

    async def scenario(client):
        body = {"prime": "Th", "length": 20000, "stream": True}
        running = asyncio.create_task(client.post("/v1/generate", json=body))
        await wait_for(lambda: scheduler.stats()["active_samples"] == 1)
        first = scheduler._process.pid
        os.kill(first, signal.SIGKILL)
        failed = await running
        again = await client.post("/v1/generate", json={"prime": "Th", "length": 50, "seed": 3})
        return failed, again, first, scheduler._process.pid

    failed, again, first, second = serve(app, scenario)
    assert failed.status_code == 200  # the stream had started: its error comes as an event
    assert "event: error" in failed.text and "generation process stopped" in failed.text
    assert again.status_code == 200 and first != second
    assert texts_of(again) == model.sample("Th", 50, seed=3)


def test_a_bad_worker_setting_is_one_line(model):
    with pytest.raises(CharloomError, match="worker must be one of thread, process, not 'fork'"):
        create_app(model, worker="fork")


def test_charloom_serve_refuses_an_unknown_worker(run_dir, capsys):
    assert main(["serve", str(run_dir), "--worker", "fork"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("charloom: error: argument --worker: invalid choice")
    assert err.count("\n") == 1
