"""Load test of ``charloom serve``: a real uvicorn on loopback, hammered by many clients.

    python bench/serve_load.py [--run RUN] [--streams 64] [--short 1000] [--json]

Starts ``charloom serve`` in a subprocess on 127.0.0.1 (a free port) - with RUN, or with a tiny
model trained here on the built-in corpus - then, at the same time,

- opens ``--streams`` streaming requests of ``--stream-length`` characters each, and
- sends ``--short`` short requests (``--short-length`` characters, not streamed),
  ``--concurrency`` at a time,

and records every request's latency; then sends malformed, oversized and out-of-range requests
and abandons streams half-way, and checks that the server refused each politely (4xx, never
5xx), dropped the abandoned work, and still answers. Prints a Markdown table (or JSON) with the
error count and p50/p90/p99 latencies. Only 127.0.0.1 is ever contacted; every phase is bounded
in requests and time. The test suite runs a smaller version (tests/test_serve_live.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

HOST = "127.0.0.1"


# --- the server -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    pid: int

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the server has used so far, where /proc tells."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None


@contextlib.contextmanager
def running_server(
    run: str | os.PathLike, extra_args: tuple[str, ...] = (), timeout: float = 60.0
) -> Iterator[LiveServer]:
    """``charloom serve RUN`` in a subprocess on a free loopback port, until the block ends."""
    port = free_port()
    cmd = [sys.executable, "-m", "charloom", "serve", str(run), "--host", HOST, "--port", str(port)]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen([*cmd, *extra_args], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the server exited early: {log.read().decode()}")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer /healthz in time")
            time.sleep(0.1)
        yield LiveServer(base, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def train_tiny(out: Path) -> Path:
    """A small model trained for a few seconds on the built-in corpus."""
    import charloom

    cfg = charloom.preset_config("tiny", iters=30, eval_every=30, log_every=30, sample_every=10**6)
    charloom.train(cfg, corpus="python-docs", out=out, console=False, overwrite=True)
    return out


# --- measuring --------------------------------------------------------------------------------
def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    v = sorted(values)

    def q(p: float) -> float:
        return v[min(len(v) - 1, max(0, round(p * (len(v) - 1))))]

    return {
        "n": len(v),
        "p50_ms": round(1000 * q(0.50), 1),
        "p90_ms": round(1000 * q(0.90), 1),
        "p99_ms": round(1000 * q(0.99), 1),
        "max_ms": round(1000 * v[-1], 1),
        "mean_ms": round(1000 * statistics.fmean(v), 1),
    }


class Connection:
    """A minimal HTTP/1.1 client connection (keep-alive, JSON bodies, chunked responses).

    httpx costs the client about 3 ms of CPU per request; on a 2-core machine that shares its
    cores with the server, the load test would mostly measure httpx. This costs a tenth of it.
    """

    def __init__(self, base: str) -> None:
        self.host, port = base.removeprefix("http://").split(":")
        self.port = int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
            self.reader = self.writer = None

    async def post(self, path: str, obj: dict) -> tuple[int, AsyncIterator[bytes]]:
        """Send one POST; return the status and an iterator over the body's pieces. The body
        must be read to its end before the next request."""
        await self._open()
        body = json.dumps(obj).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await self.writer.drain()
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {}
        for line in head[1:]:
            if line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        return status, self._body(headers)

    async def _body(self, headers: dict) -> AsyncIterator[bytes]:
        if headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                data = await self.reader.readexactly(size + 2)
                yield data[:-2]
        else:
            yield await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            await self.close()


async def one_stream(base: str, length: int, seed: int | None = None) -> dict:
    """One streamed request: time to the first text and to the end; checks what it received."""
    body = {"prime": "Th", "length": length, "stream": True, "seed": seed}
    conn = Connection(base)
    t0 = time.perf_counter()
    first, got, done, pending = None, 0, False, b""
    try:
        status, pieces = await conn.post("/v1/generate", body)
        if status != 200:
            return {"error": f"status {status}", "total": time.perf_counter() - t0}
        event = None
        async for piece in pieces:
            *lines, pending = (pending + piece).split(b"\n")
            for line in lines:
                if line.startswith(b"event: "):
                    event = line[7:].decode()
                elif line.startswith(b"data: ") and event == "text":
                    if first is None:
                        first = time.perf_counter() - t0
                    got += len(json.loads(line[6:])["text"])
                elif line.startswith(b"data: ") and event == "error":
                    return {"error": line.decode(), "total": time.perf_counter() - t0}
                elif line.startswith(b"data: ") and event == "done":
                    done = True
    finally:
        await conn.close()
    total = time.perf_counter() - t0
    if not done or got != length:
        return {"error": f"incomplete stream: {got}/{length} chars, done={done}", "total": total}
    return {"first": first, "total": total}


async def one_short(conn: Connection, length: int, seed: int | None = None) -> dict:
    """One short request, not streamed, on a kept-alive connection."""
    t0 = time.perf_counter()
    status, pieces = await conn.post(
        "/v1/generate", {"prime": "Th", "length": length, "seed": seed}
    )
    raw = b"".join([piece async for piece in pieces])
    dt = time.perf_counter() - t0
    if status != 200:
        return {"error": f"status {status}: {raw[:200]!r}", "total": dt}
    texts = json.loads(raw)["texts"]
    if len(texts) != 1 or len(texts[0]) != 2 + length:
        return {"error": f"wrong text length {len(texts[0])}", "total": dt}
    return {"total": dt}


async def guarded(coro, timeout: float) -> dict:
    try:
        return await asyncio.wait_for(coro, timeout)
    except Exception as exc:  # a client-side failure is a failed request, counted
        return {"error": f"{type(exc).__name__}: {exc}", "total": timeout}


async def load(
    base: str,
    streams: int = 64,
    short: int = 1000,
    stream_length: int = 2000,
    short_length: int = 20,
    concurrency: int = 32,
    timeout: float = 120.0,
    seeded: bool = False,
) -> dict:
    """Streams and short requests at the same time; latencies and errors of each kind.

    Each stream has a connection of its own; the short requests go over ``concurrency``
    kept-alive connections, one request at a time on each. ``seeded``: every request brings
    its own seed (each then samples on its own, the slower case) rather than none (requests
    with the same settings are then sampled together)."""
    todo = list(range(short))
    short_results: list[dict] = []

    async def short_worker() -> None:
        conn = Connection(base)
        try:
            while todo:
                n = todo.pop()
                seed = n if seeded else None
                result = await guarded(one_short(conn, short_length, seed), timeout)
                if "error" in result:
                    await conn.close()  # start afresh after a failure
                short_results.append(result)
        finally:
            await conn.close()

    t0, cpu0 = time.perf_counter(), time.process_time()
    stream_tasks = [
        asyncio.create_task(
            guarded(one_stream(base, stream_length, n if seeded else None), timeout)
        )
        for n in range(streams)
    ]
    if streams:
        await asyncio.sleep(0.2)  # let the streams get going: the short requests must cut in
    await asyncio.gather(*(short_worker() for _ in range(concurrency)))
    stream_results = await asyncio.gather(*stream_tasks)
    wall = time.perf_counter() - t0
    client_cpu = time.process_time() - cpu0
    errors = [r["error"] for r in stream_results + short_results if "error" in r]
    return {
        "streams": streams,
        "stream_length": stream_length,
        "short": short,
        "short_length": short_length,
        "concurrency": concurrency,
        "seeded": seeded,
        "wall_s": round(wall, 2),
        "client_cpu_s": round(client_cpu, 2),
        "errors": len(errors),
        "error_examples": errors[:5],
        "stream_first_char": percentiles([r["first"] for r in stream_results if "first" in r]),
        "stream_total": percentiles([r["total"] for r in stream_results if "error" not in r]),
        "short_total": percentiles([r["total"] for r in short_results if "error" not in r]),
        "chars_per_s": round(
            (streams * stream_length + short * short_length) / wall if wall else 0.0
        ),
    }


async def _raw(base: str, payload: bytes) -> bytes:
    """Send raw bytes over a fresh connection; return what the server answers (maybe b"")."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 10)
    except (ConnectionError, asyncio.TimeoutError):
        return b""
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _chunks(parts: list[bytes]):
    """A body sent with chunked transfer encoding: no Content-Length to check up front."""
    for part in parts:
        yield part


async def abuse(base: str, abandoned: int = 16, timeout: float = 30.0) -> dict:
    """Bad requests of every kind; each must get the expected 4xx, and the server must live."""
    url = base + "/v1/generate"
    j = {"Content-Type": "application/json"}
    cases: list[tuple[str, dict, set[int]]] = [
        ("malformed JSON", dict(content=b'{"prime": "Th", ', headers=j), {422}),
        ("not an object", dict(json=[1, 2, 3]), {422}),
        ("unknown field", dict(json={"prime": "Th", "temprature": 1}), {422}),
        ("length too long", dict(json={"length": 10**9}), {422}),
        ("length negative", dict(json={"length": -1}), {422}),
        ("length as text", dict(json={"length": "100"}), {422}),
        ("too many samples", dict(json={"num_samples": 10**6}), {422}),
        ("temperature zero", dict(json={"temperature": 0}), {422}),
        ("top_p above one", dict(json={"top_p": 1.5}), {422}),
        ("top_k zero", dict(json={"top_k": 0}), {422}),
        ("seed negative", dict(json={"seed": -5}), {422}),
        ("prime empty", dict(json={"prime": ""}), {422}),
        ("prime outside vocabulary", dict(json={"prime": "\u20ac\U0001f600\x00"}), {422}),
        ("prime too long", dict(json={"prime": "T" * 100_000}), {413, 422}),
        ("oversized body (1 MB)", dict(content=b"{" + b" " * 1_000_000 + b"}", headers=j), {413}),
        (
            "oversized chunked body",
            dict(content=_chunks([b'{"prime": "', b"T" * 200_000, b'"}']), headers=j),
            {413},
        ),
        ("NaN temperature", dict(content=b'{"temperature": NaN}', headers=j), {422}),
        ("next: unknown field", dict(json={"text": "Th", "x": 1}, path="/v1/next"), {422}),
        ("next: top zero", dict(json={"text": "Th", "top": 0}, path="/v1/next"), {422}),
    ]
    results, failures = [], []
    async with httpx.AsyncClient(timeout=timeout) as client:
        for name, kw, expected in cases:
            target = base + kw.pop("path", "/v1/generate")
            try:
                r = await client.post(target, **kw)
                status = r.status_code
                ok = status in expected and "message" in r.json()
            except httpx.HTTPError as exc:  # the server may close early on a huge upload
                status, ok = f"{type(exc).__name__}", False
            results.append({"case": name, "status": status})
            if not ok:
                failures.append(f"{name}: got {status}, expected {sorted(expected)}")
        for name, method, path, expected in (
            ("wrong method", "GET", "/v1/generate", 405),
            ("unknown path", "GET", "/nope", 404),
        ):
            r = await client.request(method, base + path)
            results.append({"case": name, "status": r.status_code})
            if r.status_code != expected:
                failures.append(f"{name}: got {r.status_code}, expected {expected}")
        garbage = await _raw(base, b"\x16\x03\x01 not http at all\r\n\r\n")
        results.append({"case": "not HTTP", "answer": garbage[:12].decode("latin-1")})
        if garbage and not garbage.startswith(b"HTTP/1.1 4"):
            failures.append(f"not HTTP: answered {garbage[:40]!r}")

        # Abandoned streams: read the first text, then hang up.
        async def abandon(n: int) -> None:
            body = {"prime": "Th", "length": 1000, "stream": True, "seed": n}
            async with client.stream("POST", url, json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("event: text"):
                        break

        await asyncio.gather(*(abandon(n) for n in range(abandoned)))
        deadline = time.monotonic() + 10
        while True:
            health = (await client.get(base + "/healthz")).json()
            if health["active_samples"] == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if health["active_samples"]:
            failures.append(f"abandoned streams still generating: {health}")
        r = await client.post(url, json={"prime": "Th", "length": 10})
        if r.status_code != 200:
            failures.append(f"the server stopped answering: {r.status_code}")
    return {"cases": len(results) + abandoned, "failures": failures, "results": results}


# --- report -----------------------------------------------------------------------------------
def table(report: dict) -> str:
    rows = [
        ("streaming: first character", report["load"]["stream_first_char"]),
        ("streaming: whole stream", report["load"]["stream_total"]),
        ("short requests, alongside the streams", report["load"]["short_total"]),
        ("short requests, alone (reference)", report["alone"]["short_total"]),
    ]
    lines = [
        "| requests | n | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, p in rows:
        if p.get("n"):
            lines.append(
                f"| {name} | {p['n']} | {p['p50_ms']} | {p['p90_ms']} | {p['p99_ms']} | "
                f"{p['max_ms']} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="run directory (default: train a tiny model here)")
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--short", type=int, default=1000)
    ap.add_argument("--stream-length", type=int, default=2000)
    ap.add_argument("--short-length", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seeded", action="store_true", help="every request with its own seed")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else train_tiny(Path(tmp) / "tiny")
        with running_server(run) as server:
            base = server.url
            model = httpx.get(base + "/v1/model").json()
            # The reference: the same short requests with nothing else running.
            alone = asyncio.run(
                load(
                    base, 0, args.short, 0, args.short_length, args.concurrency, seeded=args.seeded
                )
            )
            cpu_before = server.cpu_seconds()
            report = {
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                },
                "model": f"{model['model']['kind']} {model['model']['layers']}x"
                f"{model['model']['hidden']}, {model['parameters']:,} parameters, "
                f"vocabulary {model['vocab']['size']}",
                "load": asyncio.run(
                    load(
                        base,
                        args.streams,
                        args.short,
                        args.stream_length,
                        args.short_length,
                        args.concurrency,
                        seeded=args.seeded,
                    )
                ),
            }
            cpu_after = server.cpu_seconds()
            if cpu_before is not None and cpu_after is not None:
                report["load"]["server_cpu_s"] = round(cpu_after - cpu_before, 2)
            report["alone"] = alone
            report["abuse"] = asyncio.run(abuse(base))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        ld, ab = report["load"], report["abuse"]
        print(f"machine: {report['machine']}\nmodel: {report['model']}")
        print(
            f"{ld['streams']} streams x {ld['stream_length']} chars alongside {ld['short']} short "
            f"requests x {ld['short_length']} chars ({ld['concurrency']} at a time): "
            f"{ld['errors']} errors, {ld['wall_s']} s, {ld['chars_per_s']:,} chars/s, "
            f"server CPU {ld.get('server_cpu_s', '?')} s, client CPU {ld['client_cpu_s']} s\n"
        )
        print(table(report))
        ratio = ld["short_total"]["p50_ms"] / report["alone"]["short_total"]["p50_ms"]
        print(f"\nshort-request p50 alongside the streams / alone: {ratio:.2f}")
        print(f"\nbad requests: {ab['cases']} sent, {len(ab['failures'])} answered wrongly")
        for f in ab["failures"] + ld["error_examples"]:
            print("  " + f)
    return 1 if report["load"]["errors"] or report["abuse"]["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
