"""Documents mode in the server: ``/v1/generate`` with ``"documents": true`` gives what
``CharModel.documents`` gives for the same seed, and stops each row at its end."""

from __future__ import annotations

import asyncio

import pytest
import torch

pytest.importorskip("fastapi", reason="FastAPI and uvicorn are core dependencies")
httpx = pytest.importorskip("httpx", reason="needs httpx (the dev extra)")

from charloom.charmodel import CharModel  # noqa: E402
from charloom.model import CharRNN, ModelConfig  # noqa: E402
from charloom.serve import ServeLimits  # noqa: E402
from charloom.serve.app import create_app  # noqa: E402
from charloom.vocab import Vocab  # noqa: E402

LIMITS = ServeLimits(max_length=500, max_samples=8, max_prime=200, max_body=4096)


def _model(tmp_path, documents: bool = True) -> CharModel:
    vocab = Vocab.build("corpus", "abcdefghT ", documents=documents)
    torch.manual_seed(0)
    net = CharRNN(ModelConfig(vocab_size=vocab.size, embed=8, hidden=24, layers=2)).eval()
    if documents:
        with torch.no_grad():
            net.head.bias[vocab.end] += 2.0  # documents end soon
    meta = {"text": {"documents": "lines"}} if documents else {}
    return CharModel(net, vocab, False, meta, tmp_path / "best")


def _post_all(app, bodies: list[dict]) -> list[httpx.Response]:
    """Post ``bodies`` to /v1/generate at once (they share the worker's batches)."""

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://charloom") as client:
            try:
                return await asyncio.gather(
                    *(client.post("/v1/generate", json=b) for b in bodies)
                )
            finally:
                await app.state.scheduler.close()

    return asyncio.run(main())


def test_generate_documents_matches_the_python_api(tmp_path):
    model = _model(tmp_path)
    app = create_app(model, LIMITS)
    bodies = [
        {"num_samples": 6, "seed": 4, "length": 80},
        {"num_samples": 3, "seed": 5, "length": 80, "prime": "ab", "documents": True},
        {"num_samples": 2, "seed": 6, "length": 10, "temperature": 1.5},
    ]
    answers = _post_all(app, bodies)
    for body, answer in zip(bodies, answers):
        assert answer.status_code == 200, answer.text
        got = answer.json()
        want = model.documents(
            body.get("prime"),
            body["length"],
            temperature=body.get("temperature", 0.8),
            num_samples=body["num_samples"],
            seed=body["seed"],
            engine="torch",
        )
        assert got["texts"] == want.texts and got["ended"] == want.ended
    assert any(answers[0].json()["ended"])


def test_generate_documents_on_a_stream_model_is_refused(tmp_path):
    app = create_app(_model(tmp_path, documents=False), LIMITS)
    (answer,) = _post_all(app, [{"documents": True, "length": 5}])
    assert answer.status_code == 422 and "documents mode" in answer.text
    app = create_app(_model(tmp_path, documents=False), LIMITS)
    (answer,) = _post_all(app, [{"length": 5, "seed": 1}])
    assert answer.status_code == 200 and answer.json()["texts"][0].startswith("Th")
    assert answer.json()["ended"] is None and len(answer.json()["texts"][0]) == 7
