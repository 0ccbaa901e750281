"""Fine-tuning the built-in base model vs training from scratch, for the same wall-clock budget,
on the same machine, side by side in one run.

    PYTHONPATH=src python bench/finetune.py                    # budgets 60 s and 5 min
    PYTHONPATH=src python bench/finetune.py --budgets 30,120   # other budgets (seconds)
    PYTHONPATH=src python bench/finetune.py --quick            # a 10 s check of the bench

Texts: (a) the COVID-19 FAQ and (b) the last 100,000 bytes of tiny shakespeare (which the base
model never read: bench/train_base.py holds that slice back). Each is split 90/10; both arms
train on the first 90% exactly as a user would, through ``charloom train``:

    scratch:    charloom train TEXT --time BUDGET                  (the budget rule sizes it)
    fine-tune:  charloom train TEXT --time BUDGET --init-from base (the base model's size)

and are scored on the last 10% with their best checkpoint (``charloom eval``'s choice), in nats
per character. The base model reads bytes, the scratch model characters; a loss per byte would
not compare, so each arm's total loss is divided by the characters it predicted.

Prints one JSON object per run (as it finishes) and a table; ``--json FILE`` writes them all,
with the machine. Figures measured while other work shares the CPU are not records.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import charloom
from charloom.bench import machine
from charloom.presets import machine_rate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: The tail of tiny shakespeare that the benchmark uses (and the base model never read).
SLICE_BYTES = 100_000
VAL_FRACTION = 0.1
#: The gain the fine-tuned model should show over scratch at 60 s (nats/char).
TARGET_GAIN = 0.10


def texts(data: Path) -> dict[str, str]:
    """The benchmark's texts by name."""
    faq = (data / "covid19-faq.txt").read_text(encoding="utf-8")
    tail = (data / "tinyshakespeare.txt").read_bytes()[-SLICE_BYTES:].decode("utf-8")
    return {"covid-faq": faq, "shakespeare-100k": tail}


def split(text: str) -> tuple[str, str]:
    """The first 90% of the characters (for training) and the last 10% (held out)."""
    n_val = int(len(text) * VAL_FRACTION)
    return text[: len(text) - n_val], text[len(text) - n_val :]


def val_fraction(text: str, held_out: str, unit: str) -> str:
    """The --val-fraction that makes charloom hold out exactly ``held_out`` (the end of
    ``text``), counted in the run's own symbols: characters, or bytes for a bytes model."""
    size = (lambda s: len(s.encode("utf-8"))) if unit == "bytes" else len
    # +0.5: charloom rounds the held-out count down; this lands it on the exact count.
    return repr((size(held_out) + 0.5) / size(text))


def run_arm(arm: str, path: Path, text: str, held_out: str, budget: float, work: Path) -> dict:
    """Train one arm for ``budget`` seconds on ``path`` and score it on ``held_out``."""
    out = work / f"{path.stem}-{arm}-{budget:g}"
    extra = ["--init-from", "base"] if arm == "fine-tune" else []
    unit = "bytes" if arm == "fine-tune" else "chars"
    argv = [
        sys.executable,
        "-m",
        "charloom",
        "train",
        str(path),
        "--time",
        f"{budget:g}s",
        "--val-fraction",
        val_fraction(text, held_out, unit),
        "--out",
        str(out),
        "--overwrite",
        "--quiet",
        *extra,
    ]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    wall = time.perf_counter() - t0
    model = charloom.load(out)
    result = model.evaluate(held_out)
    per_char = result.loss * result.chars / (len(held_out) - 1)
    # The run's whole course is in latest/; the model scored is best/ (charloom eval's choice).
    latest = json.loads((out / "latest" / "config.json").read_text())["training"]
    m = model.config
    return {
        "text": path.stem,
        "arm": arm,
        "budget_s": budget,
        "held_out_nats_per_char": round(per_char, 4),
        "held_out_symbols": result.chars,
        "model": f"{m.kind} {m.layers}x{m.hidden}, dropout {m.dropout:g}, {model.vocab.kind}",
        "iterations": latest.get("iterations"),
        "best_iteration": latest.get("best_iteration"),
        "wall_s": round(wall, 1),
        "command": " ".join(["charloom", *argv[3:]]),
    }


def table(rows: list[dict]) -> str:
    lines = [
        f"{'text':<18}{'budget':>8}{'scratch':>10}{'fine-tune':>11}{'gain':>8}  models",
    ]
    keyed = {(r["text"], r["budget_s"], r["arm"]): r for r in rows}
    for text, budget in dict.fromkeys((r["text"], r["budget_s"]) for r in rows):
        s, f = keyed.get((text, budget, "scratch")), keyed.get((text, budget, "fine-tune"))
        if not (s and f):
            continue
        gain = s["held_out_nats_per_char"] - f["held_out_nats_per_char"]
        lines.append(
            f"{text:<18}{budget:>7g}s{s['held_out_nats_per_char']:>10.4f}"
            f"{f['held_out_nats_per_char']:>11.4f}{gain:>8.4f}  {s['model']} | {f['model']}"
        )
    lines.append("held-out loss in nats/char (lower is better); gain = scratch - fine-tune")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="60,300", help="budgets in seconds (default 60,300)")
    ap.add_argument("--quick", action="store_true", help="one 10 s budget: a check, no figures")
    ap.add_argument("--data", type=Path, default=DATA, help="folder with the two texts")
    ap.add_argument("--texts", default="covid-faq,shakespeare-100k", help="which texts")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args()
    budgets = [10.0] if args.quick else [float(b) for b in args.budgets.split(",")]
    chosen = texts(args.data)
    names = args.texts.split(",")
    unknown = set(names) - set(chosen)
    if unknown:
        ap.error(f"unknown texts: {', '.join(sorted(unknown))}; choose from {', '.join(chosen)}")
    rates = machine_rate("cpu")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="charloom-finetune-") as tmp:
        work = Path(tmp)
        for name in names:
            text = chosen[name]
            path = work / f"{name}.txt"
            path.write_text(text, encoding="utf-8")
            _, held_out = split(text)
            for budget in budgets:
                for arm in ("scratch", "fine-tune"):
                    row = run_arm(arm, path, text, held_out, budget, work)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(table(rows))
    report = {
        "bench": "finetune",
        "machine": {**machine(), "matmul_gflops": {k: round(v, 1) for k, v in rates.items()}},
        "target": f"fine-tune >= {TARGET_GAIN} nats/char below scratch at 60 s",
        "results": rows,
    }
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
