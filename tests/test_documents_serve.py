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
                return await asyncio.gather(*(client.post("/v1/generate", json=b) for b in bodies))
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


# --- the playground in a real browser -----------------------------------------------------------
def test_the_playground_shows_whole_documents(tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    from conftest import tiny_overrides

    import charloom

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip(f"no browser: {chromium} not found (apt-get install chromium)")
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("serve_load", root / "bench" / "serve_load.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("serve_load", bench)
    spec.loader.exec_module(bench)
    names = "\n".join(f"{a}{b}" for a in ("Ka", "Ri", "Mo", "Le") for b in ("na", "ro", "s")) + "\n"
    cfg = charloom.preset_config("tiny", **tiny_overrides(documents="lines", iters=20))
    charloom.train(cfg, text=names * 20, out=tmp_path / "run", console=False)
    with (
        bench.running_server(tmp_path / "run") as live,
        sync_api.sync_playwright() as p,
    ):
        browser = p.chromium.launch(
            executable_path=str(chromium), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(live.url + "/")
            page.wait_for_selector("body[data-state=idle]", timeout=15_000)
            assert page.is_checked("#documents") and page.input_value("#prime") == ""
            page.fill("#num_samples", "4")
            page.fill("#seed", "3")
            page.eval_on_selector(
                "#length", "e => { e.value = 40; e.dispatchEvent(new Event('input')); }"
            )
            page.click("#generate")
            page.wait_for_selector("body[data-state=done]", timeout=30_000)
            shown = page.text_content("#output")
        finally:
            browser.close()
        api = httpx.post(
            live.url + "/v1/generate",
            json={"length": 40, "seed": 3, "num_samples": 4, "documents": True},
        ).json()
    assert shown.split("\n") == api["texts"] and errors == []


def test_next_names_the_end_symbol_as_no_character(tmp_path):
    model = _model(tmp_path)
    with torch.no_grad():
        model.model.head.bias[model.vocab.end] += 20.0  # the likeliest next symbol
    app = create_app(model, LIMITS)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://charloom") as client:
            try:
                return await client.post("/v1/next", json={"text": "ab", "top": 3})
            finally:
                await app.state.scheduler.close()

    answer = asyncio.run(main())
    assert answer.status_code == 200, answer.text
    first = answer.json()["candidates"][0]
    assert first["id"] == model.vocab.end and first["char"] is None
