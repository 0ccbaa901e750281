"""``charloom serve`` for real: the command in a subprocess, uvicorn on 127.0.0.1, hammered by
concurrent, oversized and malformed requests, and the playground driven in headless Chromium.

The load generator is bench/serve_load.py (the full-size run writes bench/RESULTS.md); here it
runs smaller. The browser test uses Debian's ``chromium`` through Playwright and is skipped
where either is missing; it saves screenshots in test-artifacts/ for people to look at.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="FastAPI and uvicorn are core dependencies")
pytest.importorskip("uvicorn", reason="FastAPI and uvicorn are core dependencies")
httpx = pytest.importorskip("httpx", reason="needs httpx (the dev extra)")

from conftest import make_text, tiny_overrides  # noqa: E402

import charloom  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _bench():
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "bench" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = module
    spec.loader.exec_module(module)
    return module


bench = _bench()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("live") / "run"
    cfg = charloom.preset_config("tiny", **tiny_overrides())
    charloom.train(cfg, text=make_text(), out=out, console=False)
    return out


@pytest.fixture(scope="module")
def server(run_dir):
    """The server started as the README says: ``charloom serve RUN --port P``, delivering
    text every 2 ms rather than 20: the compiled engine can write a whole 1,500-character
    sample within one 20 ms chunk, and the tests that watch text arrive in pieces would then
    see one piece; and up to 20,000 characters a sample, so that a stream lasts long enough
    to come in many pieces even where the event loop is slow to pass them on."""
    with bench.running_server(run_dir, ("--chunk-ms", "2", "--max-length", "20000")) as live:
        yield live


def test_it_serves_the_page_docs_and_health(server):
    for path, kind in (("/", "text/html"), ("/docs", "text/html"), ("/openapi.json", "json")):
        r = httpx.get(server.url + path)
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"


def test_characters_arrive_while_they_are_generated(server):
    body = {"prime": "Th", "length": 20000, "stream": True}
    arrivals = []
    t0 = time.perf_counter()
    with httpx.stream("POST", server.url + "/v1/generate", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "text":
                arrivals.append((time.perf_counter() - t0, len(json.loads(line[6:])["text"])))
            elif line.startswith("data: ") and event == "done":
                done = json.loads(line[6:])
    assert sum(n for _, n in arrivals) == 20000 == len(done["completions"][0])
    assert len(arrivals) > 1 and arrivals[0][0] < arrivals[-1][0]


def test_concurrent_streams_and_short_requests_all_succeed(server):
    report = asyncio.run(
        bench.load(
            server.url,
            streams=64,
            short=200,
            stream_length=1000,
            short_length=20,
            concurrency=16,
            timeout=60,
        )
    )
    assert report["errors"] == 0, report["error_examples"]
    assert report["short_total"]["n"] == 200 and report["stream_total"]["n"] == 64


def test_the_benchmark_reads_the_streams_from_a_process_of_their_own(server):
    # bench/serve_load.py's alongside phase: streams read by a second process, short requests
    # timed from this one while they run; both sides' figures in one report.
    report = bench.alongside(server.url, 4, 2000, 50, 20, 1)
    assert report["errors"] == 0, report["error_examples"]
    assert report["stream_total"]["n"] == 4 and report["stream_chars_per_s"] > 0
    assert 0 < report["short_total"]["n"] <= 50


def test_bad_requests_are_refused_and_the_server_keeps_answering(server):
    report = asyncio.run(bench.abuse(server.url))
    assert report["failures"] == []
    assert httpx.get(server.url + "/healthz").json()["active_samples"] == 0


# --- the playground in a real browser -----------------------------------------------------------
@pytest.fixture(scope="module")
def browser_page():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (pip install playwright)"
    )
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} not found (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as p:
        # The system's Chromium, a fresh profile, nothing that reaches out to the network.
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 820},
        )
        try:
            page = context.new_page()
            page.console_errors = []
            page.on(
                "console", lambda m: page.console_errors.append(m.text) if m.type == "error" else 0
            )
            yield page
        finally:
            context.close()


def test_the_playground_streams_text_into_the_page(server, browser_page):
    page = browser_page
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-state=idle]", timeout=15_000)
    assert "LSTM" in page.text_content("#model-info")
    page.fill("#prime", "The ")
    page.fill("#seed", "5")
    page.eval_on_selector(
        "#length", "e => { e.value = 1500; e.dispatchEvent(new Event('input')); }"
    )
    assert page.text_content("#length-value") == "1500"
    page.click("#generate")
    page.wait_for_selector("body[data-state=done]", timeout=30_000)
    shown = page.text_content("#output")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground.png"))
    assert shown.startswith("The ") and len(shown) == 4 + 1500
    # However many pieces the text came in (a fast engine on a busy machine may deliver it
    # whole; the next test shows the page adding piece after piece).
    assert int(page.get_attribute("#output", "data-events")) >= 1
    api = httpx.post(
        server.url + "/v1/generate",
        json={"prime": "The ", "length": 1500, "seed": 5, "temperature": 0.8},
    ).json()
    assert shown == api["texts"][0]  # what the page showed is what the model generated
    assert "done: 1500 characters" in page.text_content("#status")
    assert page.console_errors == []


def test_the_playground_adds_each_piece_of_a_stream_as_it_comes(server, browser_page):
    # The server's answer replaced by a known stream of five pieces, so the count does not
    # depend on how fast this machine generates: the page must show every piece, in order.
    from charloom.serve.events import sse

    pieces = ["ere ", "is ", "the ", "end", "!\n"]
    stream = sse("start", {"prime": "Th", "num_samples": 1})
    for piece in pieces:
        stream += sse("text", {"index": 0, "text": piece})
    text = "Th" + "".join(pieces)
    stream += sse("done", {"texts": [text], "completions": [text[2:]], "ended": [False]})
    page = browser_page
    page.route(
        "**/v1/generate",
        lambda route: route.fulfill(status=200, content_type="text/event-stream", body=stream),
    )
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-state=idle]", timeout=15_000)
        page.fill("#prime", "Th")
        page.click("#generate")
        page.wait_for_selector("body[data-state=done]", timeout=15_000)
        assert page.text_content("#output") == text
        assert page.get_attribute("#output", "data-events") == str(len(pieces))
        made = sum(len(p) for p in pieces)
        assert f"done: {made} characters" in page.text_content("#status")
    finally:
        page.unroute("**/v1/generate")
    assert page.console_errors == []


def test_the_playground_interactive_mode_offers_clickable_candidates(server, browser_page):
    page = browser_page
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-state=idle]", timeout=15_000)
    page.fill("#prime", "Th")
    page.check("#interactive")
    page.wait_for_selector("body[data-state=choosing]", timeout=15_000)
    buttons = page.query_selector_all("#candidates .cand")
    assert len(buttons) == 10
    probs = [float(b.get_attribute("data-prob")) for b in buttons]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    first = buttons[0].get_attribute("data-char")
    page.evaluate("document.body.dataset.state = 'waiting'")
    buttons[0].click()
    page.wait_for_selector("body[data-state=choosing]", timeout=15_000)
    assert page.text_content("#output") == "Th" + first
    page.keyboard.press("2")  # number keys choose too
    page.wait_for_function("document.querySelector('#output').textContent.length === 4")
    page.screenshot(path=str(ARTIFACTS / "playground-interactive.png"))
    page.click("#undo")
    page.wait_for_function("document.querySelector('#output').textContent.length === 3")
    assert page.console_errors == []
