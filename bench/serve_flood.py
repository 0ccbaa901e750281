"""Flood test of ``charloom serve``'s fair share: one key floods, another's latency is measured.

    python bench/serve_flood.py [--run RUN] [--flood-streams 512] [--short 1000] [--json]

Trains a tiny model on the built-in corpus (or takes RUN) and starts ``charloom serve`` on
127.0.0.1 with two API keys (a key file made here), then measures, one phase after the other:

- alone: key B sends ``--warm-up`` short requests (not counted), then ``--short`` short requests
  (``--short-length`` characters, not streamed), one at a time on one kept-alive connection;
- during the flood: key A keeps ``--flood-streams`` streaming requests of ``--stream-length``
  characters in flight, each on its own connection - a refused one (429) tries again after
  ``--retry-ms``, without waiting the ``Retry-After`` it was given, and a finished one starts
  anew - while key B sends the same short requests again (warm-up first).

Key A's flood runs in a process of its own (started with this script's ``--flood-worker``), as a
flood from another machine would: in this process it would share key B's event loop, and key
B's answers would wait for the loop to read 512 streams before its clock stopped. Both
processes, and the server, share this machine's cores; the flood's process runs at the same
priority as the others.

The target: key B's p99 during the flood at most twice its p99 alone (p50 and p90 are reported
too). The report also says how many of key A's streams were accepted and refused, and the most
it had open at once (at most ``--max-active-per-client``, by default a quarter of
``--max-active``). ``--compare`` runs the flood again with the share turned off (one client may
take every slot), to show what it buys; ``--worker both`` runs it again with the model
generating in a process of its own (``charloom serve --worker process``) rather than in a
thread of the server's process (the default). Prints JSON (``--json``) or a Markdown table
naming the machine. Only 127.0.0.1 is contacted; every phase is bounded in requests and time.
tests/test_serve_auth_live.py runs a small one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from serve_load import (
    Connection,
    guarded,
    machine,
    one_short,
    percentiles,
    running_server,
    train_tiny,
)

MAX_ACTIVE = 512  # the server's default --max-active


class Flood:
    """``streams`` slots, each keeping one streaming request in flight with key ``key``."""

    def __init__(self, base: str, key: str, streams: int, length: int, retry_s: float) -> None:
        self.base, self.key, self.streams, self.length, self.retry_s = (
            base,
            key,
            streams,
            length,
            retry_s,
        )
        self.stop = asyncio.Event()
        self.accepted = self.refused = self.finished = 0
        self.open = self.most_open = 0
        self.errors: list[str] = []
        self.other_status: dict[int, int] = {}

    async def _slot(self, n: int) -> None:
        conn = Connection(self.base, headers={"Authorization": f"Bearer {self.key}"})
        body = {"prime": "Th", "length": self.length, "stream": True}
        try:
            while not self.stop.is_set():
                try:
                    status, pieces = await conn.post("/v1/generate", body)
                    if status != 200:
                        async for _ in pieces:  # read the refusal, keep the connection
                            pass
                        if status == 429:
                            self.refused += 1
                        else:
                            self.other_status[status] = self.other_status.get(status, 0) + 1
                        await self._pause()
                        continue
                    self.accepted += 1
                    self.open += 1
                    self.most_open = max(self.most_open, self.open)
                    try:
                        async for _ in pieces:
                            if self.stop.is_set():
                                await conn.close()  # hang up mid-stream
                                break
                        else:
                            self.finished += 1
                    finally:
                        self.open -= 1
                except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                    if not self.stop.is_set():
                        self.errors.append(f"slot {n}: {type(exc).__name__}: {exc}")
                    await conn.close()
                    await self._pause()
        finally:
            await conn.close()

    async def _pause(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop.wait(), self.retry_s)

    def start(self) -> list[asyncio.Task]:
        return [asyncio.create_task(self._slot(n)) for n in range(self.streams)]

    def report(self) -> dict:
        return {
            "streams": self.streams,
            "stream_length": self.length,
            "accepted": self.accepted,
            "finished": self.finished,
            "refused_429": self.refused,
            "other_status": self.other_status,
            "most_open_streams": self.most_open,
            "errors": len(self.errors),
            "error_examples": self.errors[:5],
        }


async def shorts(
    base: str, key: str, n: int, length: int, timeout: float, warm_up: int = 0
) -> dict:
    """``warm_up`` then ``n`` short requests with ``key``, one after the other on one kept-alive
    connection; the figures are the ``n``'s (the warm-up's errors are counted too)."""
    conn = Connection(base, headers={"Authorization": f"Bearer {key}"})
    results = []
    try:
        for _ in range(warm_up + n):
            result = await guarded(one_short(conn, length), timeout)
            if "error" in result:
                await conn.close()
            results.append(result)
    finally:
        await conn.close()
    errors = [r["error"] for r in results if "error" in r]
    return {
        "short": percentiles([r["total"] for r in results[warm_up:] if "error" not in r]),
        "warm_up": warm_up,
        "errors": len(errors),
        "error_examples": errors[:5],
    }


async def flood_worker(
    base: str, key: str, streams: int, length: int, retry_s: float, want_open: int
) -> dict:
    """In the flood's own process: flood, say ``ready`` on standard output once ``want_open``
    streams are open (or after 10 s), stop when a line (or the end) comes on standard input,
    and return the flood's report."""
    flood = Flood(base, key, streams, length, retry_s)
    tasks = flood.start()
    deadline = time.monotonic() + 10
    while flood.most_open < want_open and time.monotonic() < deadline:
        await asyncio.sleep(0.02)  # the flood holds its share before the measuring starts
    print(json.dumps({"ready": flood.most_open}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    flood.stop.set()
    await asyncio.wait(tasks, timeout=30)
    for task in tasks:
        task.cancel()
    return flood.report()


def flood_phase(
    base: str, keys: tuple[str, str], args: dict, want_open: int, timeout: float
) -> tuple[dict, dict]:
    """Key B's short requests while key A floods from another process; (key B's figures, the
    flood's)."""
    cmd = [sys.executable, __file__, "--flood-worker", base, keys[0], str(want_open)]
    cmd += ["--flood-streams", str(args["flood_streams"])]
    cmd += ["--stream-length", str(args["stream_length"])]
    cmd += ["--retry-ms", str(1000 * args["retry_s"])]
    worker = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert worker.stdin is not None and worker.stdout is not None
    try:
        ready = worker.stdout.readline()
        if not ready:
            raise RuntimeError("the flood's process ended before it was ready")
        during = asyncio.run(
            shorts(base, keys[1], args["short"], args["short_length"], timeout, args["warm_up"])
        )
        worker.stdin.write("stop\n")
        worker.stdin.flush()
        out, _ = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    return during, json.loads(out)


def measure(
    run: str | os.PathLike,
    flood_streams: int = 512,
    short: int = 1000,
    short_length: int = 20,
    warm_up: int = 50,
    stream_length: int = 2000,
    per_client: int | None = None,
    retry_ms: float = 100.0,
    timeout: float = 120.0,
    worker: str = "thread",
) -> dict:
    """Start a keyed server on ``run``, measure key B alone and during key A's flood.
    ``worker``: ``charloom serve --worker`` (where the model generates)."""
    keys = (secrets.token_urlsafe(24), secrets.token_urlsafe(24))
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "keys"
        key_file.write_text("\n".join(keys) + "\n")
        key_file.chmod(0o600)
        server_args = ("--api-key-file", str(key_file), "--max-length", str(stream_length))
        server_args += ("--max-connections", str(flood_streams + 64), "--worker", worker)
        if per_client is not None:
            server_args += ("--max-active-per-client", str(per_client))
        with running_server(run, server_args) as server:
            info = httpx.get(
                server.url + "/v1/model", headers={"Authorization": f"Bearer {keys[1]}"}
            ).json()
            share = info["limits"]["max_active_per_client"]
            alone = asyncio.run(shorts(server.url, keys[1], short, short_length, timeout, warm_up))
            args = {
                "flood_streams": flood_streams,
                "stream_length": stream_length,
                "short": short,
                "short_length": short_length,
                "warm_up": warm_up,
                "retry_s": retry_ms / 1000,
            }
            want = min(share, flood_streams)
            during, flood = flood_phase(server.url, keys, args, want, timeout)
            deadline = time.monotonic() + 10  # the hung-up streams are dropped, and freed
            while True:
                health = httpx.get(server.url + "/healthz").json()
                if not health["admitted_samples"] or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
    p99_alone, p99_during = alone["short"].get("p99_ms"), during["short"].get("p99_ms")
    p50_alone, p50_during = alone["short"].get("p50_ms"), during["short"].get("p50_ms")
    return {
        "model": f"{info['model']['kind']} {info['model']['layers']}x{info['model']['hidden']}",
        "worker": worker,
        "max_active": info["limits"]["max_active"],
        "max_active_per_client": share,
        "alone": alone,
        "during": during,
        "flood": flood,
        "after": {k: health[k] for k in ("active_samples", "admitted_samples")},
        "ratio_p50": round(p50_during / p50_alone, 2) if p50_alone and p50_during else None,
        "ratio_p99": round(p99_during / p99_alone, 2) if p99_alone and p99_during else None,
    }


def table(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
        f"fp32 matmul {m['fp32_matmul_gflops']:,} GFLOP/s, load average {m['load_average']}",
        f"model: {report['fair']['model']}",
        "",
        "| worker, share per client | key B alone: p50 / p90 / p99 | in flood: p50 / p90 / p99 | "
        "p99 ratio (target <= 2x) | key A: accepted / 429 / most open |",
        "|---|---:|---:|---:|---:|",
    ]

    def spread(p: dict) -> str:
        return f"{p['p50_ms']} / {p['p90_ms']} / {p['p99_ms']} ms" if p.get("n") else "-"

    for name in ("fair", "fair_process", "unfair"):
        r = report.get(name)
        if r is None:
            continue
        a, d, f = r["alone"]["short"], r["during"]["short"], r["flood"]
        failed = r["during"]["errors"]
        during = f"{spread(d)} | " + (f"{r['ratio_p99']}x" if d.get("n") else "-")
        during += f" ({failed} of key B's requests failed)" if failed else ""
        lines.append(
            f"| {r['worker']}, {r['max_active_per_client']} of {r['max_active']} | {spread(a)} | "
            f"{during} | "
            f"{f['accepted']} / {f['refused_429']} / {f['most_open_streams']} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="run directory (default: train a tiny model here)")
    ap.add_argument("--flood-streams", type=int, default=512)
    ap.add_argument("--stream-length", type=int, default=2000)
    ap.add_argument("--short", type=int, default=1000)
    ap.add_argument("--warm-up", type=int, default=50, help="short requests not counted")
    ap.add_argument("--short-length", type=int, default=20)
    ap.add_argument("--max-active-per-client", type=int, default=None)
    ap.add_argument("--retry-ms", type=float, default=100.0)
    ap.add_argument("--compare", action="store_true", help="also flood with the share off")
    ap.add_argument(
        "--worker",
        choices=("thread", "process", "both"),
        default="thread",
        help="charloom serve --worker; both: the process's figures too, measured after",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--flood-worker",
        nargs=3,
        metavar=("URL", "KEY", "OPEN"),
        help=argparse.SUPPRESS,  # the flood's own process (see flood_phase)
    )
    args = ap.parse_args()
    if args.flood_worker:
        base, key, want = args.flood_worker
        report = asyncio.run(
            flood_worker(
                base, key, args.flood_streams, args.stream_length, args.retry_ms / 1000, int(want)
            )
        )
        print(json.dumps(report), flush=True)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else train_tiny(Path(tmp) / "tiny")
        report = {"machine": machine()}
        common = dict(
            flood_streams=args.flood_streams,
            short=args.short,
            warm_up=args.warm_up,
            short_length=args.short_length,
            stream_length=args.stream_length,
            retry_ms=args.retry_ms,
        )
        worker = "thread" if args.worker == "both" else args.worker
        report["fair"] = measure(
            run, per_client=args.max_active_per_client, worker=worker, **common
        )
        if args.worker == "both":
            report["fair_process"] = measure(
                run, per_client=args.max_active_per_client, worker="process", **common
            )
        if args.compare:
            report["unfair"] = measure(run, per_client=MAX_ACTIVE, **common)
        report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    fair = report["fair"]
    errors = fair["alone"]["errors"] + fair["during"]["errors"] + fair["flood"]["errors"]
    print(json.dumps(report, indent=2) if args.json else table(report))
    if "unfair" in report:
        print("(with the share off, key B's failures are the point: the flood took every slot)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
