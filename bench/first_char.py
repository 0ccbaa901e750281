"""Time to the first character: how long ``charloom sample RUN`` takes, from process start, to
put its first character on stdout - with numba's cache cold and warm.

    python bench/first_char.py [--reps 3] [--length 2000]

Trains a tiny run first (in a temporary folder, deleted at the end), then starts fresh
processes of ``python -m charloom sample RUN --length L --seed 1`` and reads their stdout:

- ``cold``: ``NUMBA_CACHE_DIR`` an empty folder, new for each process: numba must compile, so
  the sample starts on the numpy engine and switches to numba when the background compile ends;
- ``warm``: ``NUMBA_CACHE_DIR`` a folder already filled by one earlier sample;
- for scale, a process that only imports torch, and one that imports charloom's sample path.

For each: the median over ``--reps`` of the seconds to the first character and to the end of
the sample (all ``L`` characters). Prints JSON with the machine (cpu, cores, torch version).
Every process is timed from just before it is started, so interpreter start-up counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def _env(cache: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "NUMBA_CACHE_DIR": str(cache)}


def first_char(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds from starting ``cmd`` to its first byte on stdout, and to its end."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    t_first = time.perf_counter() - start
    rest, err = proc.communicate()
    t_end = time.perf_counter() - start
    if proc.returncode != 0 or not first:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return t_first, t_end


def _median(pairs: list[tuple[float, float]]) -> dict[str, float]:
    return {
        "first_char_s": statistics.median(p[0] for p in pairs),
        "end_s": statistics.median(p[1] for p in pairs),
        "all_first_char_s": [round(p[0], 3) for p in pairs],
    }


def _machine() -> dict:
    out = subprocess.run(
        [sys.executable, "-c", "import json, charloom.bench as b; print(json.dumps(b.machine()))"],
        capture_output=True,
        text=True,
        env=_env(Path(tempfile.gettempdir())),
        check=True,
    )
    return json.loads(out.stdout)


def run(reps: int, length: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="charloom-first-char-") as tmp:
        work = Path(tmp)
        text = work / "text.txt"
        text.write_text("The quick brown fox jumps over the lazy dog.\n" * 400, encoding="utf-8")
        exe = [sys.executable, "-m", "charloom"]
        run_dir = work / "run"
        subprocess.run(
            [
                *exe,
                "train",
                str(text),
                "--preset",
                "tiny",
                "--iters",
                "20",
                "--out",
                str(run_dir),
                "--quiet",
            ],
            check=True,
            env=_env(work / "train-cache"),
        )
        sample = [*exe, "sample", str(run_dir), "--length", str(length), "--seed", "1"]
        results: dict = {"machine": _machine(), "length": length, "reps": reps}
        cold = [first_char(sample, _env(work / f"cold-{i}")) for i in range(reps)]
        warm_cache = work / "warm"
        first_char([*sample[:-4], "--length", "10", "--engine", "numba"], _env(warm_cache))
        warm = [first_char(sample, _env(warm_cache)) for _ in range(reps)]
        imports = {
            "python_only": "pass",
            "import_torch": "import torch",
            # what `charloom sample` imports on the CPU (torch is not among them)
            "import_sample_path": "import charloom.commands, charloom.cpusample",
            "import_torch_sample_path": "import charloom.commands, charloom.charmodel",
        }
        for key, code in imports.items():
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-c", code], check=True, env=_env(warm_cache))
                times.append(time.perf_counter() - t0)
            results[f"{key}_s"] = statistics.median(times)
        results["cold"] = _median(cold)
        results["warm"] = _median(warm)
    return results


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2
        print(f"first_char.py: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _at_least_one(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {value!r}")
    return int(value)


def main() -> None:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=_at_least_one, default=3)
    parser.add_argument("--length", type=_at_least_one, default=2000)
    args = parser.parse_args()
    print(json.dumps(run(args.reps, args.length), indent=2))


if __name__ == "__main__":
    main()
