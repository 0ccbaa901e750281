"""Load test of ``charloom serve``: a real uvicorn on loopback, against ``charloom sample``.

    python bench/serve_load.py [--run RUN] [--streams 64] [--stream-length 20000] [--json]

Trains a tiny model on the built-in corpus (or takes RUN), measures ``sample(num_samples=64)``
in this process - the offline figure the server is held to - then starts ``charloom serve`` in
a subprocess on 127.0.0.1 (a free port) and measures, one phase after another:

- short requests alone (``--short`` of ``--short-length`` characters, not streamed,
  ``--concurrency`` at a time: one by default, so the latency is one request's);
- ``--streams`` streaming requests of ``--stream-length`` characters, unseeded, then each with
  its own seed: characters per second from the first request sent to the last stream done;
- the same unseeded streams, read by a process of their own, with the short requests sent
  alongside them from this one until they end;
- malformed, oversized and out-of-range requests and streams abandoned half-way: the server must
  refuse each politely (4xx, never 5xx), drop the abandoned work, and still answer.

The targets: 64 streams reach at least half the offline characters per second, seeded and
unseeded; a short request's median latency alongside them is at most twice its latency alone.
Prints JSON (``--json``) or a Markdown table naming the machine (processor from lscpu, cores,
torch, the fp32 matrix-multiply rate). Only 127.0.0.1 is ever contacted; every phase is
bounded in requests and time. The test suite runs a smaller version (tests/test_serve_live.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    log: Any = None  # the server's output so far (a file), for tests to read

    def output(self) -> str:
        """What the server has written to its standard output and error so far."""
        if self.log is None:
            return ""
        self.log.flush()
        return Path(f"/proc/self/fd/{self.log.fileno()}").read_text(errors="replace")

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the server has used so far, where /proc tells."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None


@contextlib.contextmanager
def running_server(
    run: str | os.PathLike,
    extra_args: tuple[str, ...] = (),
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    cafile: str | os.PathLike | None = None,
) -> Iterator[LiveServer]:
    """``charloom serve RUN`` in a subprocess on a free loopback port, until the block ends.
    ``env``: extra environment variables; with ``--ssl-certfile`` among ``extra_args``, the
    URL is https and ``cafile`` is the certificate to trust."""
    port = free_port()
    cmd = [sys.executable, "-m", "charloom", "serve", str(run), "--host", HOST, "--port", str(port)]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [*cmd, *extra_args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    tls = "--ssl-certfile" in extra_args
    base = f"{'https' if tls else 'http'}://{HOST}:{port}"
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=cafile) if cafile else True
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the server exited early: {log.read().decode()}")
            try:
                if httpx.get(base + "/healthz", timeout=1, verify=verify).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer /healthz in time")
            time.sleep(0.1)
        yield LiveServer(base, proc.pid, log)
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

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        self.host, port = base.removeprefix("http://").split(":")
        self.port = int(port)
        #: Sent with every request (an ``Authorization`` header, say).
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
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
            f"{self.extra}Content-Length: {len(body)}\r\n\r\n".encode()
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
    only_alongside: bool = False,
    streams_done: Callable[[], bool] | None = None,
) -> dict:
    """Streams and short requests at the same time; latencies and errors of each kind.

    Each stream has a connection of its own; the short requests go over ``concurrency``
    kept-alive connections, one request at a time on each. ``seeded``: every request brings
    its own seed (it then draws its own random numbers) rather than none (requests with the
    same settings then share the server's). ``only_alongside``: send short requests only while
    the streams run (at most ``short``); ``streams_done``: says when streams run elsewhere (in
    another process, see :func:`alongside`) have ended, for ``only_alongside``."""
    todo = list(range(short))
    short_results: list[dict] = []

    async def short_worker() -> None:
        conn = Connection(base)
        try:
            while todo and not (only_alongside and ended()):
                n = todo.pop()
                seed = n if seeded else None
                result = await guarded(one_short(conn, short_length, seed), timeout)
                if "error" in result:
                    await conn.close()  # start afresh after a failure
                short_results.append(result)
        finally:
            await conn.close()

    def ended() -> bool:
        return streams_done() if streams_done else all(t.done() for t in stream_tasks)

    t0, cpu0 = time.perf_counter(), time.process_time()
    stream_end = [t0]

    async def timed_stream(n: int) -> dict:
        result = await guarded(one_stream(base, stream_length, n if seeded else None), timeout)
        stream_end[0] = max(stream_end[0], time.perf_counter())
        return result

    stream_tasks = [asyncio.create_task(timed_stream(n)) for n in range(streams)]
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
            (streams * stream_length + len(short_results) * short_length) / wall if wall else 0.0
        ),
        "stream_chars_per_s": round(streams * stream_length / (stream_end[0] - t0))
        if streams
        else None,
    }


def alongside(
    base: str, streams: int, stream_length: int, short: int, short_length: int, concurrency: int
) -> dict:
    """Short requests sent while ``streams`` streams run, the streams read by a process of
    their own (as other users' would be): the short requests' client then has its event loop
    to itself, and their latency is the server's, not that of a client also parsing 64
    streams' events. The streams' figures come from that process; the short ones from here."""
    cmd = [sys.executable, __file__, "--streams-worker", base, str(streams), str(stream_length)]
    worker = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    out: list[str] = []
    try:
        if worker.stdout.readline().strip() != "ready":
            raise RuntimeError("the streams' process ended before its streams started")
        reader = threading.Thread(target=lambda: out.append(worker.stdout.read()), daemon=True)
        reader.start()
        shorts = asyncio.run(
            load(
                base,
                0,
                short,
                0,
                short_length,
                concurrency,
                only_alongside=True,
                streams_done=lambda: bool(out) or worker.poll() is not None,
            )
        )
        worker.wait(timeout=600)
        reader.join(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    report = json.loads(out[0])
    report["streams_client_cpu_s"] = report["client_cpu_s"]  # the streams' process's
    for key in ("short", "short_total", "client_cpu_s"):  # the measuring client's, as elsewhere
        report[key] = shorts[key]
    report["errors"] += shorts["errors"]
    report["error_examples"] += shorts["error_examples"]
    return report


async def streams_worker(base: str, streams: int, stream_length: int) -> dict:
    """In the streams' own process (:func:`alongside`): start the streams, say ``ready`` on
    standard output once they have had time to get going, and return their figures."""
    task = asyncio.create_task(load(base, streams, 0, stream_length, concurrency=0))
    await asyncio.sleep(0.3)
    print("ready", flush=True)
    return await task


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


# --- the machine and the offline reference ----------------------------------------------------
def machine() -> dict:
    """The processor as lscpu names it, the cores, torch, and the fp32 matrix-multiply rate
    (``charloom.bench.matmul_peak``), so that figures from two machines are not compared."""
    import torch

    from charloom.bench import matmul_peak

    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "fp32_matmul_gflops": round(matmul_peak(torch.float32, min_time=0.5) / 1e9, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d"),
    }


def offline_chars_per_s(run: Path, streams: int, length: int) -> dict:
    """``sample(num_samples=streams)`` of ``length`` characters with the run's model, in this
    process, as ``charloom sample`` runs it: new characters per second, and the engine."""
    import charloom
    from charloom.sample import engine_name

    model = charloom.load(run)
    model.sample("Th", 64, num_samples=streams, seed=0)  # compile (or load) and warm up
    start = time.perf_counter()
    texts = model.sample("Th", length, num_samples=streams, seed=1)
    elapsed = time.perf_counter() - start
    return {
        "chars_per_s": round(sum(len(t) - 2 for t in texts) / elapsed),
        "engine": engine_name(model.model),
    }


# --- report -----------------------------------------------------------------------------------
def targets(report: dict) -> dict:
    """The issue's targets, from the figures of this run."""
    offline = report["offline"]["chars_per_s"]
    alone = report["alone"]["short_total"].get("p50_ms")
    along = report["alongside"]["short_total"].get("p50_ms")
    return {
        "unseeded_over_offline": round(report["unseeded"]["stream_chars_per_s"] / offline, 3),
        "seeded_over_offline": round(report["seeded"]["stream_chars_per_s"] / offline, 3),
        "short_p50_alongside_over_alone": round(along / alone, 2) if alone and along else None,
    }


def table(report: dict) -> str:
    m, t, off = report["machine"], report["targets"], report["offline"]
    streams = report["unseeded"]["streams"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
        f"fp32 matmul {m['fp32_matmul_gflops']:,} GFLOP/s, load average {m['load_average']}",
        f"model: {report['model']}",
        "",
        "| measure | measured | target |",
        "|---|---:|---:|",
        f"| offline: `sample(num_samples={streams})`, {off['engine']} engine | "
        f"{off['chars_per_s']:,} chars/s | |",
    ]
    for key, what in (("unseeded", "unseeded"), ("seeded", "each with its own seed")):
        ld = report[key]
        lines.append(
            f"| server: {streams} streaming requests x {ld['stream_length']:,} chars, {what} | "
            f"{ld['stream_chars_per_s']:,} chars/s ({t[key + '_over_offline']:.2f}x offline) | "
            ">= 0.5x |"
        )
    alone, along = report["alone"]["short_total"], report["alongside"]["short_total"]
    lines += [
        f"| short request ({report['alone']['short_length']} chars), p50 alone | "
        f"{alone.get('p50_ms')} ms | |",
        f"| short request, p50 alongside {streams} streams | {along.get('p50_ms')} ms "
        f"({t['short_p50_alongside_over_alone']}x alone) | <= 2x |",
        "",
        "| requests | n | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows = [
        ("streaming: first character (unseeded)", report["unseeded"]["stream_first_char"]),
        ("streaming: whole stream (unseeded)", report["unseeded"]["stream_total"]),
        ("streaming: whole stream (seeded)", report["seeded"]["stream_total"]),
        ("short requests, alone", alone),
        ("short requests, alongside the streams", along),
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
    ap.add_argument("--stream-length", type=int, default=20000)
    ap.add_argument("--short", type=int, default=200)
    ap.add_argument("--short-length", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=1, help="short requests at a time")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--streams-worker", nargs=3, help=argparse.SUPPRESS)  # see alongside()
    args = ap.parse_args()
    if args.streams_worker:
        base, n, length = args.streams_worker
        print(json.dumps(asyncio.run(streams_worker(base, int(n), int(length)))), flush=True)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else train_tiny(Path(tmp) / "tiny")
        report: dict = {"machine": machine()}
        report["offline"] = offline_chars_per_s(run, args.streams, args.stream_length)
        limits = ("--max-length", str(max(2000, args.stream_length)))
        limits += ("--max-active", str(max(512, 2 * args.streams)))
        with running_server(run, limits) as server:
            base = server.url
            model = httpx.get(base + "/v1/model").json()
            report["model"] = (
                f"{model['model']['kind']} {model['model']['layers']}x"
                f"{model['model']['hidden']}, {model['parameters']:,} parameters, "
                f"vocabulary {model['vocab']['size']}"
            )
            short = (args.short, 0, args.short_length, args.concurrency)
            streams = (args.streams, 0, args.stream_length, args.short_length, args.concurrency)
            report["alone"] = asyncio.run(load(base, 0, *short))
            for key, seeded in (("unseeded", False), ("seeded", True)):
                cpu = server.cpu_seconds()
                report[key] = asyncio.run(load(base, *streams, seeded=seeded))
                if cpu is not None:
                    report[key]["server_cpu_s"] = round((server.cpu_seconds() or 0) - cpu, 2)
            n, _, length, short_length, concurrency = streams
            report["alongside"] = alongside(base, n, length, args.short, short_length, concurrency)
            report["abuse"] = asyncio.run(abuse(base))
        report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = targets(report)
    phases = ("alone", "unseeded", "seeded", "alongside")
    errors = [e for key in phases for e in report[key]["error_examples"]]
    failed = sum(report[key]["errors"] for key in phases) or report["abuse"]["failures"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table(report))
        ab = report["abuse"]
        print(
            f"\nerrors: {sum(report[key]['errors'] for key in phases)}; bad requests: "
            f"{ab['cases']} sent, {len(ab['failures'])} answered wrongly"
        )
        for f in ab["failures"] + errors:
            print("  " + f)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
