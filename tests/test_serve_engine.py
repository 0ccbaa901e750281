"""The server generates with the engine ``charloom sample`` uses, many steps per call, and still
gives a seeded request exactly the text ``charloom sample --seed`` gives - whatever else runs
beside it, however its chunks are cut, in every vocabulary."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="FastAPI and uvicorn are core dependencies")
httpx = pytest.importorskip("httpx", reason="needs httpx (the dev extra)")

from conftest import make_text, tiny_overrides  # noqa: E402

import charloom  # noqa: E402
from charloom import fastgen  # noqa: E402
from charloom.charmodel import CharModel  # noqa: E402
from charloom.commands import main  # noqa: E402
from charloom.model import CharRNN, ModelConfig  # noqa: E402
from charloom.nextchar import SampleSettings  # noqa: E402
from charloom.sample import CompiledGenerator, engine_name, sample  # noqa: E402
from charloom.serve import ServeLimits  # noqa: E402
from charloom.serve.app import create_app  # noqa: E402
from charloom.serve.jobs import GenerateJob  # noqa: E402
from charloom.serve.scheduler import Scheduler  # noqa: E402
from charloom.serve.stepping import Stepper  # noqa: E402
from charloom.vocab import Vocab  # noqa: E402

# Settings that cannot share an engine call, and two that can (the last two).
SETTINGS = [
    {"temperature": 0.5},
    {"temperature": 1.2, "top_k": 5},
    {"top_p": 0.9, "num_samples": 2},
    {"greedy": True},
    {"temperature": 1.0, "num_samples": 3},
    {"temperature": 1.0},
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve-engine") / "run"
    charloom.train(
        charloom.preset_config("tiny", **tiny_overrides()), text=make_text(), out=out, console=False
    )
    return out


@pytest.fixture(scope="module")
def model(run_dir) -> CharModel:
    return charloom.load(run_dir)


def _untrained(vocab: Vocab, kind: str = "lstm", layers: int = 1) -> CharModel:
    torch.manual_seed(0)
    net = CharRNN(
        ModelConfig(kind=kind, vocab_size=vocab.size, embed=8, hidden=16, layers=layers)
    ).eval()
    return CharModel(net, vocab, False, {}, Path("untrained/best"))


def _texts(response: httpx.Response, prime: str) -> list[str]:
    """The texts of a plain or streamed ``/v1/generate`` answer."""
    if not response.headers["content-type"].startswith("text/event-stream"):
        return response.json()["texts"]
    *_, last = (block for block in response.text.split("\n\n") if block.strip())
    event, data = (line.split(": ", 1)[1] for line in last.split("\n"))
    assert event == "done", data
    return json.loads(data)["texts"]


def _serve_all(app, bodies: list[dict], others: list[dict]) -> list[httpx.Response]:
    """Send ``others`` (left running), then ``bodies`` one after another a moment apart, so that
    chunks are cut short by arrivals; return the answers to ``bodies``."""

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://charloom") as client:
            try:
                background = [
                    asyncio.create_task(client.post("/v1/generate", json=b)) for b in others
                ]
                tasks = []
                for body in bodies:
                    tasks.append(asyncio.create_task(client.post("/v1/generate", json=body)))
                    await asyncio.sleep(0.01)
                answers = await asyncio.gather(*tasks)
                for r in await asyncio.gather(*background):
                    assert r.status_code == 200, r.text
                return answers
            finally:
                await app.state.scheduler.close()

    return asyncio.run(main())


def _sample_kwargs(body: dict) -> dict:
    keys = ("temperature", "top_k", "top_p", "greedy", "num_samples", "seed")
    return {k: body[k] for k in keys if k in body}


def test_the_server_uses_the_engine_charloom_sample_uses(model):
    if fastgen.available():
        fastgen.prepare(wait=True)  # compiled (or loaded from numba's cache) beforehand
    scheduler = create_app(model).state.scheduler
    assert scheduler.engine == engine_name(model.model)
    if fastgen.available():
        assert scheduler.engine == "numba"
        assert isinstance(scheduler.stepper.generator, CompiledGenerator)


def test_seeded_text_is_charloom_sample_text_whatever_runs_beside(model, run_dir, capsys):
    # chunk_ms=2: many short chunks, cut short again by the arrivals.
    app = create_app(model, ServeLimits(max_length=2000, chunk_ms=2))
    bodies = [
        {"prime": "Th", "length": 300 + 37 * i, "seed": 100 + i, "stream": i % 2 == 0, **s}
        for i, s in enumerate(SETTINGS)
    ]
    others = [{"prime": "The", "length": 1500, "stream": True, **s} for s in SETTINGS[:4]]
    answers = _serve_all(app, bodies, others)
    for body, answer in zip(bodies, answers):
        assert answer.status_code == 200, answer.text
        expected = model.sample(body["prime"], body["length"], **_sample_kwargs(body))
        assert _texts(answer, body["prime"]) == expected, body
    # And the command itself, for one of them.
    body = bodies[1]
    argv = ["sample", str(run_dir), "--prime", "Th", "--length", str(body["length"])]
    argv += ["--seed", str(body["seed"]), "--temperature", "1.2", "--top-k", "5"]
    assert main(argv) == 0
    assert capsys.readouterr().out == _texts(answers[1], "Th")[0] + "\n"


@pytest.mark.parametrize(("kind", "layers"), [("gru", 2), ("rnn", 1)])
def test_other_cells_keep_their_seeded_text_too(kind, layers):
    model = _untrained(Vocab.build("printable"), kind, layers)
    app = create_app(model, ServeLimits(chunk_ms=2))
    bodies = [{"prime": "Th", "length": 250, "seed": i, **s} for i, s in enumerate(SETTINGS)]
    answers = _serve_all(app, bodies, [{"prime": "T", "length": 800, "temperature": 1.0}])
    for body, answer in zip(bodies, answers):
        expected = model.sample("Th", 250, **_sample_kwargs(body))
        assert _texts(answer, "Th") == expected, body


def test_bytes_vocabulary_keeps_its_seeded_text():
    # An untrained model at temperature 2 draws bytes of every kind: multi-byte characters
    # complete across chunk boundaries, and invalid sequences become U+FFFD, as offline.
    model = _untrained(Vocab.build("bytes"))
    app = create_app(model, ServeLimits(chunk_ms=2))
    bodies = [
        {"prime": "日本", "length": 200, "seed": 3, "temperature": 2.0, "stream": True},
        {"prime": "é", "length": 150, "seed": 4, "temperature": 2.0, "num_samples": 2},
    ]
    answers = _serve_all(app, bodies, [{"prime": "a", "length": 600, "temperature": 2.0}])
    for body, answer in zip(bodies, answers):
        expected = model.sample(body["prime"], body["length"], **_sample_kwargs(body))
        assert _texts(answer, body["prime"]) == expected
        assert all(len(t) == len(body["prime"]) + body["length"] for t in expected)


def test_a_chunk_cut_short_gives_its_unused_random_numbers_back(model):
    stepper = Stepper(model.model, chunk_s=1.0)
    ids = [int(i) for i in model.vocab.encode("Th")]
    settings = SampleSettings(temperature=1.0)
    seeded = GenerateJob(ids, settings, 400, num_samples=2, seed=9)
    unseeded = GenerateJob(ids, settings, 400, num_samples=3)
    for job in (seeded, unseeded):
        job.prime(stepper.start, model.vocab)
    cuts = iter([True, False] * 1000)  # every other block ends its chunk early
    texts, chunks = ["Th", "Th"], 0
    while not seeded.finished:
        stepper.step([j for j in (seeded, unseeded) if not j.finished], lambda: next(cuts))
        texts = [a + b for a, b in zip(texts, seeded.take_fresh())]
        chunks += 1
    assert texts == model.sample("Th", 400, temperature=1.0, num_samples=2, seed=9)
    assert chunks > 4


def test_the_torch_engine_keeps_the_seeded_text(model):
    scheduler = Scheduler(model.model, model.vocab, chunk_ms=2, engine="torch")
    assert scheduler.engine == "torch"
    ids = [int(i) for i in model.vocab.encode("Th")]

    async def run() -> list[str]:
        job = GenerateJob(ids, SampleSettings(top_k=4), 120, num_samples=2, seed=21)
        beside = GenerateJob(ids, SampleSettings(top_k=4), 300)
        pieces = scheduler.generate(beside)
        texts = ["Th", "Th"]
        async for got in scheduler.generate(job):
            texts = [a + b for a, b in zip(texts, got)]
        await pieces.aclose()
        await scheduler.close()
        return texts

    expected = sample(model.model, model.vocab, "Th", 120, SampleSettings(top_k=4), 2, 21, "torch")
    assert asyncio.run(run()) == expected


@pytest.fixture
def fresh_engine_state(monkeypatch):
    """fastgen's per-process state restored after a test that makes it fail or recompile."""
    for name, value in (("_failure", None), ("_said", set())):
        monkeypatch.setattr(fastgen, name, value)
    for name in ("_kernels", "_thread"):
        monkeypatch.setattr(fastgen, name, getattr(fastgen, name))


@pytest.mark.skipif(not fastgen.available(), reason="numba is not installed")
def test_a_server_started_while_compiling_takes_the_compiled_engine_when_ready(
    model, fresh_engine_state, monkeypatch
):
    monkeypatch.setattr(fastgen, "_kernels", None)  # as if the compile had not finished
    monkeypatch.setattr(fastgen, "prepare", lambda wait=False: False)
    app = create_app(model)
    assert app.state.scheduler.engine == "torch"  # nobody waits on the compiler
    monkeypatch.undo()  # the compiled kernels are back: ready
    fastgen.prepare(wait=True)
    body = {"prime": "Th", "length": 80, "seed": 3, "temperature": 0.9}
    (answer,) = _serve_all(app, [body], [])
    assert app.state.scheduler.engine == "numba"
    assert _texts(answer, "Th") == model.sample("Th", 80, seed=3, temperature=0.9)


@pytest.mark.skipif(not fastgen.available(), reason="numba is not installed")
def test_a_compiled_engine_failing_at_run_time_falls_back_to_torch(
    model, fresh_engine_state, monkeypatch, caplog
):
    fastgen.prepare(wait=True)
    app = create_app(model)
    assert app.state.scheduler.engine == "numba"

    def broken(self, *args, **kwargs):
        raise RuntimeError("illegal instruction, say")

    monkeypatch.setattr(fastgen.FastGenerator, "run", broken)
    body = {"prime": "Th", "length": 60, "seed": 5}
    (answer,) = _serve_all(app, [body], [])
    assert answer.status_code == 200
    assert app.state.scheduler.engine == "torch"
    # the same text as the reference engine gives, and one line saying so
    assert _texts(answer, "Th") == model.sample("Th", 60, seed=5, engine="torch")
    said = [r.getMessage() for r in caplog.records if "compiled engine failed" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0]
