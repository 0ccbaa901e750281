"""Prepared data at scale: `charloom prepare` throughput and memory on a 1 GB text, and the cost
of a training step on a 1 MB and a 1 GB prepared corpus.

    python bench/prepare_bench.py [--gb 1.0] [--steps 30] [--rounds 3] [--keep] [--json]

Builds a text of ``--gb`` GB under /tmp by concatenating real text (the .py, .txt and .rst files
of this Python installation that are UTF-8, repeated), then, each in its own process:

- ``charloom prepare`` with the corpus vocabulary (two streaming passes) and with the bytes
  vocabulary (one pass): wall time, MB/s of input, peak resident memory; the same on the first
  1 MB of the text, the reference for "memory does not grow with the input";
- ``--steps`` training steps of the ``tiny`` preset (after 5 warm-up steps) on the first 1 MB and
  on the whole 1 GB, both prepared with the bytes vocabulary so the model is the same, with
  stream and with portion batching, alternating the two corpora for ``--rounds`` rounds (the
  machine may be shared): the median time per step, and the process's peak memory - with,
  at the end, its anonymous part (its own) and its file-backed part (mapped pages of ids.bin:
  clean page cache, which recent kernels map 2 MB at a time).

Prints a table and (``--json``) the figures as JSON. Deletes what it wrote unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

WORK = Path("/tmp/charloom-prepare-bench")


def build_text(path: Path, target: int) -> int:
    """Write at least ``target`` bytes of real UTF-8 text to ``path``; the bytes written."""
    roots = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]}
    files = []
    for root in sorted(roots):
        for d, dirs, names in os.walk(root):
            dirs.sort()
            files += [Path(d) / n for n in sorted(names) if n.endswith((".py", ".txt", ".rst"))]
    written = 0
    with open(path, "wb") as out:
        while written < target:
            before = written
            for f in files:
                try:
                    data = f.read_bytes()
                    data.decode("utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                if b"\x00" in data:
                    continue
                out.write(data)
                written += len(data)
                if written >= target:
                    break
            if written == before:
                raise SystemExit("found no text files to build the corpus from")
    return written


def head(src: Path, dst: Path, size: int) -> None:
    """The first ``size`` bytes of ``src``, cut back to a whole UTF-8 character."""
    with open(src, "rb") as fh:
        data = fh.read(size + 4)
    cut = size
    while cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    dst.write_bytes(data[:cut])


def run_measured(cmd: list[str]) -> tuple[float, int, str]:
    """Run ``cmd``; its wall time, peak resident memory (bytes, from wait4) and stdout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode()[-2000:]}")
    return seconds, usage.ru_maxrss * 1024, out.decode()


def prepare(text: Path, out: Path, vocab: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "charloom",
        "prepare",
        str(text),
        "--out",
        str(out),
        "--vocab",
        vocab,
        "--quiet",
        "--overwrite",
    ]
    seconds, rss, _ = run_measured(cmd)
    size = text.stat().st_size
    meta = json.loads((out / "meta.json").read_text())
    return {
        "input_mb": size / 1e6,
        "vocab": vocab,
        "symbols": meta["vocab"]["size"],
        "dtype": meta["dtype"],
        "seconds": seconds,
        "mb_per_s": size / 1e6 / seconds,
        "peak_rss_mb": rss / 1e6,
    }


def step_times(folder: Path, batching: str, steps: int) -> None:
    """(In a child process) time ``steps`` training steps on prepared ``folder``; print JSON."""

    import charloom
    from charloom.batches import make_batches
    from charloom.data import map_prepared
    from charloom.step import TrainStep

    config, data = map_prepared(charloom.preset_config("tiny", batching=batching), folder)
    step = TrainStep.build(config, data.vocab.size)
    batches = make_batches(batching, data.train, config.batch_size, config.seq_len, seed=1)
    for _ in range(5):
        step.take(batches)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step.take(batches)
        times.append(time.perf_counter() - t0)
    # Resident memory split: anonymous (the process's own) and file-backed (pages of the mapped
    # ids, clean page cache shared with the kernel; recent kernels map whole 2 MB folios).
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    kb = {k: int(status[k].split()[0]) for k in ("RssAnon", "RssFile") if k in status}
    print(
        json.dumps(
            {
                "median_ms": 1e3 * statistics.median(times),
                "ids": len(data.train),
                "anon_mb": kb.get("RssAnon", 0) / 1024,
                "file_mb": kb.get("RssFile", 0) / 1024,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0, help="size of the big text (1.0)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the files under " + str(WORK))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--step", nargs=2, metavar=("FOLDER", "BATCHING"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        step_times(Path(args.step[0]), args.step[1], args.steps)
        return

    WORK.mkdir(parents=True, exist_ok=True)
    try:
        big, small = WORK / "big.txt", WORK / "small.txt"
        t0 = time.perf_counter()
        size = build_text(big, int(args.gb * 1e9))
        built = time.perf_counter() - t0
        head(big, small, 1_000_000)
        preps = [
            prepare(big, WORK / "big-corpus", "corpus"),
            prepare(big, WORK / "big-bytes", "bytes"),
            prepare(small, WORK / "small-bytes", "bytes"),
        ]
        shutil.rmtree(WORK / "big-corpus")  # the disk it takes (2 bytes a character)
        steps: dict[tuple[str, str], list[tuple[float, int]]] = {}
        for _ in range(args.rounds):
            for batching in ("stream", "portions"):
                for name in ("small", "big"):
                    cmd = [
                        sys.executable,
                        __file__,
                        "--steps",
                        str(args.steps),
                        "--step",
                        str(WORK / f"{name}-bytes"),
                        batching,
                    ]
                    _, rss, out = run_measured(cmd)
                    steps.setdefault((name, batching), []).append((json.loads(out), rss))
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)

    step_rows = [
        {
            "corpus": "1 MB" if name == "small" else f"{size / 1e9:.2f} GB",
            "batching": batching,
            "median_step_ms": statistics.median(r["median_ms"] for r, _ in got),
            "all_step_ms": [round(r["median_ms"], 2) for r, _ in got],
            "peak_rss_mb": max(rss for _, rss in got) / 1e6,
            "anon_mb": max(r["anon_mb"] for r, _ in got),
            "file_mapped_mb": max(r["file_mb"] for r, _ in got),
        }
        for (name, batching), got in sorted(steps.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]
    import torch

    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    result = {
        "machine": machine,
        "text_bytes": size,
        "text_build_s": built,
        "prepare": preps,
        "steps": step_rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    print(
        f"\nText: {size / 1e9:.2f} GB of this Python's .py/.txt/.rst files, repeated "
        f"(built in {built:.0f} s). Machine: {machine}\n"
    )
    print("| prepare | vocabulary | symbols | ids | seconds | MB/s | peak RSS MB |")
    print("|---|---|---:|---|---:|---:|---:|")
    for p in preps:
        print(
            f"| {p['input_mb']:,.0f} MB | {p['vocab']} | {p['symbols']:,} | {p['dtype']} | "
            f"{p['seconds']:.1f} | {p['mb_per_s']:.0f} | {p['peak_rss_mb']:.0f} |"
        )
    print(
        "\n| training step (tiny, bytes) | batching | median ms/step | per round "
        "| peak RSS MB | anonymous MB | file-backed MB |"
    )
    print("|---|---|---:|---|---:|---:|---:|")
    for r in step_rows:
        print(
            f"| {r['corpus']} | {r['batching']} | {r['median_step_ms']:.2f} | "
            f"{', '.join(f'{x:.2f}' for x in r['all_step_ms'])} | {r['peak_rss_mb']:.0f} | "
            f"{r['anon_mb']:.0f} | {r['file_mapped_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
