"""Which peak learning rate should fine-tuning default to? Fine-tunes the base model for a fixed
number of iterations at several learning rates on the benchmark's two texts and reports the
held-out loss (the last 10%, nats per character) of each run's best checkpoint.

    PYTHONPATH=src python bench/finetune_lr.py [--iters 50] [--lrs 3e-4,1e-3,3e-3]

Fixed iterations (not a time budget), so that a CPU shared with other work changes how long it
takes, not what it measures. Everything else is the fine-tuning default (``presets.FINETUNE``
warm-up, the default preset's batch and sequence length, one seed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import charloom
from charloom.bench import machine

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def texts() -> dict[str, str]:
    faq = (DATA / "covid19-faq.txt").read_text(encoding="utf-8")
    tail = (DATA / "tinyshakespeare.txt").read_bytes()[-100_000:].decode("utf-8")
    return {"covid-faq": faq, "shakespeare-100k": tail}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--lrs", default="3e-4,1e-3,3e-3")
    ap.add_argument("--parent", default="base")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in texts().items():
            held_out = text[len(text) - int(len(text) * 0.1) :]
            for lr in (float(x) for x in args.lrs.split(",")):
                out = Path(tmp) / f"{name}-{lr:g}"
                # One torch thread: on a shared CPU, two mostly wait for each other.
                config = charloom.preset_config(
                    init_from=args.parent, lr=lr, iters=args.iters, eval_every=args.iters, threads=1
                )
                t0 = time.perf_counter()
                charloom.train(config, text=text, out=out, console=False)
                model = charloom.load(out)
                result = model.evaluate(held_out)
                per_char = result.loss * result.chars / (len(held_out) - 1)
                row = {
                    "text": name,
                    "lr": lr,
                    "iters": args.iters,
                    "held_out_nats_per_char": round(per_char, 4),
                    "wall_s": round(time.perf_counter() - t0, 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(json.dumps({"machine": machine(), "parent": args.parent}))
    print(f"{'text':<18}{'lr':>8}{'held-out':>10}")
    for r in rows:
        print(f"{r['text']:<18}{r['lr']:>8g}{r['held_out_nats_per_char']:>10.4f}")


if __name__ == "__main__":
    main()
