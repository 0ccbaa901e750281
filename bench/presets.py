"""Parameters and training speed (characters per second) of each preset on this machine.

    python bench/presets.py [--steps 20] [--json]

Times ``--steps`` training steps of each preset (after two warm-up steps) on tiny shakespeare
when ``../shared/data`` is present, else on the built-in corpus; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import charloom
from charloom.batches import make_batches
from charloom.data import encode_text
from charloom.presets import PRESETS
from charloom.step import TrainStep

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def measure(name: str, text: str, steps: int) -> dict:
    cfg = charloom.preset_config(name, iters=10**9)
    data = encode_text(cfg, text)
    step = TrainStep.build(cfg, data.vocab.size)
    batches = make_batches(cfg.batching, data.train, cfg.batch_size, cfg.seq_len, seed=1)
    for _ in range(2):  # warm-up: first calls build the kernels for this shape
        step.take(batches)
    t0 = time.perf_counter()
    for _ in range(steps):
        step.take(batches)
    dt = time.perf_counter() - t0
    return {
        "preset": name,
        "model": f"{cfg.model.kind} {cfg.model.layers}x{cfg.model.hidden}",
        "parameters": step.model.num_parameters(),
        "batch": f"{cfg.batch_size}x{cfg.seq_len}",
        "path": cfg.path,
        "precision": step.config.precision,  # what `auto` became on this machine
        "chars_per_s": cfg.batch_size * cfg.seq_len * steps / dt,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if DATA.exists():
        text = DATA.read_text(encoding="utf-8")
    else:
        from charloom.corpus import load_builtin

        text = load_builtin("python-docs")
    rows = [measure(name, text, args.steps if name != "seed" else 10) for name in PRESETS]
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps({"machine": machine, "presets": rows}, indent=2))
        return
    print(f"machine: {machine}")
    print("| preset | model | parameters | batch | path | precision | chars/s |")
    print("|---|---|---:|---|---|---|---:|")
    for r in rows:
        print(
            f"| `{r['preset']}` | {r['model']} | {r['parameters']:,} | {r['batch']} | "
            f"{r['path']} | {r['precision']} | {r['chars_per_s']:,.0f} |"
        )


if __name__ == "__main__":
    main()
