"""Training speed on a GPU: characters per second and model FLOP/s against the device's measured
bf16 matrix-multiply peak.

    python bench/gpu_speed.py [--device cuda] [--steps 30] [--quick] [--json]

1. The peak: the best of a few square bf16 ``torch.matmul`` sizes (2 n^3 FLOPs each), timed
   after warm-up, in the same run.
2. For each model (LSTM 2x512 and larger, bf16 autocast, fused path), ``--steps`` training
   steps after warm-up on tiny shakespeare (``../shared/data``) or the built-in corpus:
   characters per second (forward and backward), and model FLOP/s =
   chars/s x 3 (forward + backward) x 2 (multiply-add) x (sum over layers of 4 h (in + h), plus
   the head's h V), the same count for every kind of hardware - and that as a share of the peak.

``--quick``: a tiny model and matmul, a few steps - checks the script itself, on any device.
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
from charloom.device import resolve_device, resolve_precision
from charloom.step import TrainStep

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

# (name, overrides): the 2x512 model of the issue and larger ones.
MODELS = [
    ("lstm 2x512", dict(layers=2, hidden=512, embed=128, batch_size=64, seq_len=128)),
    ("lstm 3x1024", dict(layers=3, hidden=1024, embed=256, batch_size=64, seq_len=128)),
    ("lstm 2x2048", dict(layers=2, hidden=2048, embed=256, batch_size=128, seq_len=128)),
    ("lstm 4x2048 b256", dict(layers=4, hidden=2048, embed=512, batch_size=256, seq_len=128)),
]
QUICK_MODELS = [("lstm 1x64", dict(layers=1, hidden=64, embed=16, batch_size=8, seq_len=32))]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, sizes: list[int], repeats: int) -> dict:
    """The best bf16 matmul throughput (FLOP/s) over square ``sizes``."""
    best = {"flops": 0.0, "n": 0}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
        flops = 2 * n**3 * repeats / (time.perf_counter() - t0)
        if flops > best["flops"]:
            best = {"flops": flops, "n": n}
    return best


def model_flops_per_char(cfg: charloom.TrainConfig) -> float:
    """Training FLOPs per character: 3 x 2 x (recurrent multiply-adds + the head's)."""
    m = cfg.model
    gates = m.gates
    macs = sum(
        gates * m.hidden * ((m.embed if layer == 0 else m.hidden) + m.hidden)
        for layer in range(m.layers)
    )
    return 3 * 2 * (macs + m.hidden * m.vocab_size)


def train_speed(name: str, overrides: dict, text: str, device: str, steps: int) -> dict:
    # bf16 where the device multiplies it natively; a CPU without bf16 (no AVX-512 BF16/AMX)
    # has no bf16 LSTM kernel at all, so it measures fp32.
    precision = resolve_precision("auto", resolve_device(device))
    cfg = charloom.preset_config(
        "medium", iters=10**9, precision=precision, device=device, dropout=0.0, **overrides
    )
    data = encode_text(cfg, text)
    step = TrainStep.build(cfg, data.vocab.size, device)
    batches = make_batches(cfg.batching, data.train, cfg.batch_size, cfg.seq_len, seed=1)
    for _ in range(5):  # warm-up: kernels chosen, memory pools filled
        step.take(batches)
    sync(step.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step.take(batches)
    sync(step.device)
    seconds = time.perf_counter() - t0
    chars_per_s = cfg.batch_size * cfg.seq_len * steps / seconds
    return {
        "model": name,
        "parameters": step.model.num_parameters(),
        "batch": f"{cfg.batch_size}x{cfg.seq_len}",
        "precision": precision,
        "ms_per_step": 1e3 * seconds / steps,
        "chars_per_s": chars_per_s,
        "model_flops": chars_per_s * model_flops_per_char(cfg),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu", "mps", "auto"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check the script")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = resolve_device(args.device)
    if DATA.exists():
        text = DATA.read_text(encoding="utf-8")
    else:
        from charloom.corpus import load_builtin

        text = load_builtin("python-docs")
    if args.quick:
        peak = matmul_peak(device, [256], 3)
        rows = [train_speed(n, o, text, device.type, 3) for n, o in QUICK_MODELS]
    else:
        peak = matmul_peak(device, [4096, 8192, 16384] if device.type == "cuda" else [1024], 20)
        rows = [train_speed(n, o, text, device.type, args.steps) for n, o in MODELS]
    for row in rows:
        row["share_of_peak"] = row["model_flops"] / peak["flops"]
    machine = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
    }
    if args.json:
        print(json.dumps({"machine": machine, "bf16_matmul_peak": peak, "models": rows}))
    print(
        f"\n{machine['device']}: bf16 matmul peak {peak['flops'] / 1e12:.1f} TFLOP/s "
        f"(n={peak['n']}); torch {machine['torch']}, CUDA {machine['cuda']}\n"
    )
    print(
        "| model (bf16, fused) | parameters | batch | ms/step | chars/s | model TFLOP/s | of peak |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['parameters']:,} | {r['batch']} | {r['ms_per_step']:.1f} | "
            f"{r['chars_per_s']:,.0f} | {r['model_flops'] / 1e12:.2f} | "
            f"{100 * r['share_of_peak']:.1f}% |"
        )


if __name__ == "__main__":
    main()
