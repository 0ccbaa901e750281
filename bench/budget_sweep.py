"""Which model is best for a time budget? Trains several sizes for the same wall-clock budget on
one corpus and reports the held-out loss of each - the measurements behind the ``--time`` rule
(``charloom.presets.budget_overrides``).

    python bench/budget_sweep.py --time 90s [--data tinyshakespeare.txt] [--configs "..." ...]

Each config is a string of ``charloom train`` flags. Prints one JSON line per run and a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_CONFIGS = [
    "--layers 1 --hidden 256 --embed 64 --batch-size 32 --seq-len 100 --lr 3e-3",
    "--layers 2 --hidden 256 --embed 64 --batch-size 32 --seq-len 100 --lr 3e-3",
    "--layers 1 --hidden 512 --embed 64 --batch-size 32 --seq-len 100 --lr 2e-3",
    "--layers 2 --hidden 384 --embed 64 --batch-size 32 --seq-len 100 --lr 2e-3 --precision bf16",
    "--layers 2 --hidden 512 --embed 64 --batch-size 32 --seq-len 100 --lr 2e-3 --precision bf16",
]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def run(config: str, budget: str, data: Path, work: Path) -> dict:
    out = work / f"run{abs(hash(config))}"
    exe = [sys.executable, "-m", "charloom"]
    t0 = time.perf_counter()
    subprocess.run(
        [*exe, "train", str(data), "--time", budget, "--out", str(out), "--overwrite", "--quiet",
         "--dropout", "0", *config.split()],
        check=True,
    )
    wall = time.perf_counter() - t0
    text = data.read_text(encoding="utf-8")
    held = work / "held.txt"
    held.write_text(text[len(text) - len(text) // 10 :], encoding="utf-8")
    res = subprocess.run([*exe, "eval", str(out), str(held), "--json"], check=True,
                         capture_output=True, text=True)
    summary = json.loads((out / "latest" / "config.json").read_text())["training"]
    return {"config": config, "budget": budget, "val_loss": json.loads(res.stdout)["loss"],
            "iterations": summary["iterations"], "chars_seen": summary["chars_seen"],
            "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", default="90s")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            r = run(config, args.time, args.data, Path(tmp))
            print(json.dumps(r), flush=True)
            rows.append(r)
    print("| budget | flags | iterations | chars seen | val loss |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['budget']} | `{r['config']}` | {r['iterations']:,} | {r['chars_seen']:,} | "
              f"{r['val_loss']:.4f} |")


if __name__ == "__main__":
    main()
