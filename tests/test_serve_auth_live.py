"""``charloom serve`` with API keys for real: the command in a subprocess, uvicorn on 127.0.0.1,
keys from a file and from the environment, TLS with a certificate made here, the fair share per
key, the access log, and the playground in headless Chromium asking for the key.

The certificate is made with the ``cryptography`` package where it is installed, else with the
``openssl`` command; without either the TLS test is skipped. The browser test is skipped without
Playwright or Debian's ``chromium`` (as in test_serve_live.py).
"""

from __future__ import annotations

import asyncio
import datetime
import importlib.util
import ipaddress
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="FastAPI and uvicorn are core dependencies")
pytest.importorskip("uvicorn", reason="FastAPI and uvicorn are core dependencies")
httpx = pytest.importorskip("httpx", reason="needs httpx (the dev extra)")

from conftest import make_text, tiny_overrides  # noqa: E402
from test_serve_live import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS  # noqa: E402

import charloom  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY_FILE_KEY = "live-file-key-0123456789abcdef"
KEY_ENV_KEY = "live-env-key-abcdefghij0123456789"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench = _load("serve_load")
flood = _load("serve_flood")


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("auth-live") / "run"
    cfg = charloom.preset_config("tiny", **tiny_overrides())
    charloom.train(cfg, text=make_text(), out=out, console=False)
    return out


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"# keys for the live test\n{KEY_FILE_KEY}\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def server(run_dir, key_file):
    """Keys from a file and from the environment, two samples per client, the access log on."""
    args = ("--api-key-file", str(key_file), "--max-active-per-client", "2", "--access-log")
    args += ("--max-length", "200000")
    with bench.running_server(run_dir, args, env={"CHARLOOM_API_KEYS": KEY_ENV_KEY}) as live:
        yield live


def test_keys_are_needed_and_enough(server):
    url = server.url
    body = {"prime": "Th", "length": 12}
    assert httpx.post(url + "/v1/generate", json=body).status_code == 401
    wrong = httpx.post(url + "/v1/generate", json=body, headers=bearer(KEY_FILE_KEY[:-1] + "!"))
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    assert wrong.json()["message"] == httpx.post(url + "/v1/generate", json=body).json()["message"]
    for key in (KEY_FILE_KEY, KEY_ENV_KEY):
        r = httpx.post(url + "/v1/generate", json=body, headers=bearer(key))
        assert r.status_code == 200 and len(r.json()["completions"][0]) == 12
    assert httpx.get(url + "/healthz").json()["status"] == "ok"
    assert httpx.get(url + "/").status_code == 200  # the page's shell, which asks for the key
    assert httpx.get(url + "/openapi.json").status_code == 401
    assert httpx.get(url + "/openapi.json", headers=bearer(KEY_ENV_KEY)).status_code == 200


def test_odd_authorization_headers_are_refused_and_the_server_lives(server):
    url = server.url + "/v1/model"
    for value in ("Basic " + KEY_FILE_KEY, "Bearer", "Bearer " + "x" * 4000, "\u00e9t\u00e9"):
        r = httpx.get(url, headers={"Authorization": value.encode("utf-8")})
        assert r.status_code == 401, value
    # Past uvicorn's header limit the server answers 400 (or hangs up) before the app sees it.
    try:
        huge = httpx.get(url, headers={"Authorization": "Bearer " + "x" * 200_000})
        assert huge.status_code in (400, 401, 431)
    except httpx.HTTPError:
        pass
    assert httpx.get(url, headers=bearer(KEY_FILE_KEY)).status_code == 200


def test_a_key_past_its_share_gets_429_and_another_key_is_served(server):
    async def scenario():
        body = {"prime": "Th", "length": 200_000, "num_samples": 2, "stream": True}
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            async with http.stream(
                "POST", "/v1/generate", json=body, headers=bearer(KEY_FILE_KEY)
            ) as stream:
                assert stream.status_code == 200
                short = {"prime": "Th", "length": 5}
                over = await http.post("/v1/generate", json=short, headers=bearer(KEY_FILE_KEY))
                other = await http.post("/v1/generate", json=short, headers=bearer(KEY_ENV_KEY))
            # Hung up: the server drops the stream and gives the share back.
            await asyncio.sleep(0.5)
            after = await http.post("/v1/generate", json=short, headers=bearer(KEY_FILE_KEY))
        return over, other, after

    over, other, after = asyncio.run(scenario())
    assert over.status_code == 429 and over.headers["retry-after"] == "1"
    assert other.status_code == 200 and after.status_code == 200


def test_the_access_log_shows_four_characters_of_a_key_at_most(server):
    httpx.get(server.url + "/v1/model", headers=bearer(KEY_ENV_KEY))
    deadline = time.monotonic() + 5
    while "GET /v1/model" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    out = server.output()
    assert '"GET /v1/model HTTP/1.1" 200' in out and "key live..." in out
    assert "1 API key" not in out and "2 API key(s)" in out
    for key in (KEY_FILE_KEY, KEY_ENV_KEY):
        assert key[:5] not in out


# --- TLS --------------------------------------------------------------------------------------
def self_signed(folder: Path) -> tuple[Path, Path] | None:
    """A certificate for 127.0.0.1 and its key, in PEM files; ``None`` if nothing can make one."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            return None
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
            + ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"]
            + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True,
            capture_output=True,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = private.public_key()
    made = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(made.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def test_tls_with_a_certificate_made_here(run_dir, tmp_path):
    made = self_signed(tmp_path)
    if made is None:
        pytest.skip("no way to make a certificate here (pip install cryptography, or openssl)")
    cert, key = made
    key.chmod(0o600)
    args = ("--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    env = {"CHARLOOM_API_KEYS": KEY_ENV_KEY}
    with bench.running_server(run_dir, args, env=env, cafile=cert) as live:
        assert live.url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=live.url, verify=trust, timeout=30) as http:
            r = http.post("/v1/generate", json={"length": 7}, headers=bearer(KEY_ENV_KEY))
            assert r.status_code == 200 and len(r.json()["completions"][0]) == 7
            assert http.get("/v1/model").status_code == 401
        with pytest.raises(httpx.HTTPError):  # a client that does not trust it stops
            httpx.get(live.url + "/healthz")
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets nowhere
            httpx.get(live.url.replace("https", "http") + "/healthz", timeout=5)
        assert f"at {live.url}/" in live.output()


# --- the flood benchmark, small ---------------------------------------------------------------
def test_the_flood_benchmark_runs_small(run_dir):
    report = flood.measure(run_dir, flood_streams=24, short=30, stream_length=400, per_client=8)
    assert report["alone"]["errors"] == 0 and report["during"]["errors"] == 0
    assert report["alone"]["short"]["n"] == report["during"]["short"]["n"] == 30
    fl = report["flood"]
    assert fl["accepted"] > 0 and fl["refused_429"] > 0 and fl["errors"] == 0
    assert 0 < fl["most_open_streams"] <= 8  # the share held
    assert report["after"]["admitted_samples"] == 0  # the hung-up streams were dropped
    assert report["ratio_p99"] is not None


# --- the playground in a real browser, with a key ---------------------------------------------
def test_the_playground_asks_for_the_key_then_generates(server):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (pip install playwright)"
    )
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} not found (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 820},
        )
        try:
            page = context.new_page()
            page.goto(server.url + "/")
            page.wait_for_selector("body[data-state=key]", timeout=15_000)
            assert page.is_visible("#key-panel")
            page.fill("#api-key", "not-the-key-0123456789")
            page.click("#key-save")
            page.wait_for_selector("#key-error:has-text('not accepted')", timeout=15_000)
            page.fill("#api-key", KEY_FILE_KEY)
            page.press("#api-key", "Enter")
            page.wait_for_selector("body[data-state=idle]", timeout=15_000)
            assert not page.is_visible("#key-panel") and "LSTM" in page.text_content("#model-info")
            page.fill("#prime", "The ")
            page.fill("#seed", "5")
            page.click("#generate")
            page.wait_for_selector("body[data-state=done]", timeout=30_000)
            shown = page.text_content("#output")
            api = httpx.post(
                server.url + "/v1/generate",
                json={"prime": "The ", "length": len(shown) - 4, "seed": 5, "temperature": 0.8},
                headers=bearer(KEY_FILE_KEY),
            ).json()
            assert shown == api["texts"][0]
            stored = page.evaluate("sessionStorage.getItem('charloom-api-key')")
            assert stored == KEY_FILE_KEY  # in this tab's session storage, nowhere else
            assert page.evaluate("localStorage.length") == 0
            assert KEY_FILE_KEY not in page.content()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "playground-with-key.png"))
            page.goto(server.url + "/docs")  # the docs page uses the same key
            page.wait_for_selector(".op", timeout=15_000)
            assert "/v1/generate" in page.text_content("#ops")
        finally:
            context.close()
