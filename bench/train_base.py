"""Train charloom's built-in base model and write it, with its model card, into the package.

    PYTHONPATH=src python bench/train_base.py                 # every stage, then export
    PYTHONPATH=src python bench/train_base.py --stage 2       # only the second stage
    PYTHONPATH=src python bench/train_base.py --export RUN    # export an already trained run

Training is one run of ``SETTINGS["iters"]`` iterations with a cosine schedule (an LSTM 1x384
over bytes: about as fast per step as the 1x256 that ``--time 60s`` picks from scratch, so a
fine-tune gets about as many steps as a scratch run). ``STAGES`` can split it into a run and
resumes of it (``--iters N``: the cosine's horizon moves, a warm restart), for a machine that
cannot hold the whole run at once; every stage is deterministic, so the same commands give the
same weights on the same machine. Train it with nothing else running: the card records the wall
time as the machine's.

The data is text the project may redistribute:

- the Python documentation topics that ship with Python (``pydoc_data.topics``, the built-in
  ``python-docs`` corpus; PSF License Version 2);
- tiny shakespeare (``/work/shared/data/tinyshakespeare.txt``; Shakespeare's plays, public domain)
  EXCLUDING its last 100,000 bytes: ``bench/finetune.py`` fine-tunes on exactly that slice and
  evaluates on its last 10%, so the base model must never have read it.

The COVID-19 FAQ, the benchmark's other text, is not used. Training runs a fixed number of
iterations with a fixed seed, so a loaded machine makes it slower, not different. The card
records the command, the data (with SHA-256), the seed, the wall time and the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import charloom
from charloom.bench import machine
from charloom.corpus import load_builtin
from charloom.presets import machine_rate

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_BASE = ROOT / "src" / "charloom" / "base"
SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")
#: The tail of tiny shakespeare that bench/finetune.py fine-tunes and evaluates on.
HELD_BACK_BYTES = 100_000
#: The files of a checkpoint folder that the package ships (no optimiser state).
CHECKPOINT_FILES = ("config.json", "model.safetensors", "manifest.json")

SETTINGS = dict(
    kind="lstm",
    layers=1,
    hidden=384,
    embed=64,
    dropout=0.1,
    vocab="bytes",
    batch_size=64,
    seq_len=128,
    lr=3e-3,
    warmup=100,
    iters=2000,
    val_fraction=0.05,
    eval_every=250,
    sample_every=1000,
    log_every=50,
    seed=1337,
    threads=2,
)
#: The iterations at the end of each stage: the first trains, each later one resumes the run.
STAGES = (2000,)


def base_text(shakespeare: Path) -> tuple[str, list[dict]]:
    """The training text and a description of each part (name, licence, size, SHA-256)."""
    docs = load_builtin("python-docs")
    raw = shakespeare.read_bytes()
    if len(raw) <= HELD_BACK_BYTES:
        raise SystemExit(f"{shakespeare} is too short to hold back {HELD_BACK_BYTES:,} bytes")
    # Cut on a byte boundary the benchmark uses too, then decode (tiny shakespeare is ASCII).
    play = raw[:-HELD_BACK_BYTES].decode("utf-8")
    parts = [
        (
            "python-docs",
            "Python documentation topics (pydoc_data.topics, Python "
            f"{sys.version.split()[0]}); PSF License Version 2",
            docs,
        ),
        (
            "tinyshakespeare (all but its last 100,000 bytes)",
            "Shakespeare's plays as collected in char-rnn's tiny shakespeare; public domain",
            play,
        ),
    ]
    described = [
        {
            "name": name,
            "licence": licence,
            "chars": len(text),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        }
        for name, licence, text in parts
    ]
    return "\n\n".join(text for _, _, text in parts), described


def train(out: Path, shakespeare: Path, command: str) -> tuple[Path, dict]:
    text, parts = base_text(shakespeare)
    config = charloom.TrainConfig().replace(**SETTINGS)
    start = time.time()
    charloom.train(config, text=text, out=out, overwrite=True, progress_bar=False)
    wall = time.time() - start
    record = {
        "command": command,
        "data": parts,
        "data_chars": len(text),
        "wall_s": round(wall, 1),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
    }
    (out / "base_training.json").write_text(json.dumps(record, indent=2) + "\n")
    return out, record


def extend(out: Path, shakespeare: Path, command: str, iters: int) -> tuple[Path, dict]:
    """A later stage: resume ``out`` to ``iters`` iterations."""
    text, _ = base_text(shakespeare)
    record = json.loads((out / "base_training.json").read_text())
    start = time.time()
    trainer = charloom.load_trainer(out, {"iters": iters}, text=text, progress_bar=False)
    trainer.run()
    record["command"] = f"{record['command']}; then {command}"
    record["wall_s"] = round(record["wall_s"] + time.time() - start, 1)
    (out / "base_training.json").write_text(json.dumps(record, indent=2) + "\n")
    return out, record


def export(run: Path, record: dict) -> None:
    """Copy ``run``'s best checkpoint into the package and write the model card beside it."""
    best = run / "best"
    config = json.loads((best / "config.json").read_text())
    rates = machine_rate("cpu")
    card = {
        "name": "base",
        "description": (
            "charloom's built-in base model: a small byte-level LSTM trained on the Python "
            "documentation and Shakespeare, made to be fine-tuned (charloom train TEXT "
            "--init-from base) or sampled as it is."
        ),
        "model": config["model"],
        "vocab": config["vocab"],
        "training": {
            "command": record.get("command"),
            "settings": SETTINGS,
            "seed": SETTINGS["seed"],
            "iterations": config["training"]["iterations"],
            "stages": "trained to " + ", then resumed to ".join(map(str, STAGES))
            if len(STAGES) > 1
            else f"one run of {STAGES[0]} iterations",
            "chars_seen": config["training"]["chars_seen"],
            "best_val_loss": config["training"]["best_val_loss"],
            "best_iteration": config["training"]["best_iteration"],
            "val_fraction": SETTINGS["val_fraction"],
            "wall_s": record.get("wall_s"),
            "started_utc": record.get("started_utc"),
        },
        "data": record.get("data"),
        "data_chars": record.get("data_chars"),
        "excluded": [
            "the last 100,000 bytes of tiny shakespeare (bench/finetune.py's test text)",
            "the COVID-19 FAQ (bench/finetune.py's other test text)",
        ],
        "machine": {
            **machine(),
            "matmul_gflops_fp32": round(rates["fp32"], 1),
            "alone": (
                "trained with every other process of the machine paused, so the wall time is "
                "the machine's own"
            ),
        },
        "licence": (
            "The weights are derived from the Python documentation (PSF License Version 2) and "
            "from public-domain Shakespeare; they are distributed under charloom's licence."
        ),
    }
    PACKAGE_BASE.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_FILES:
        shutil.copyfile(best / name, PACKAGE_BASE / name)
    (PACKAGE_BASE / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {PACKAGE_BASE} (best validation {card['training']['best_val_loss']:.4f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/base-train", help="run directory for the training")
    ap.add_argument("--shakespeare", default=str(SHAKESPEARE), help="tiny shakespeare's path")
    ap.add_argument("--export", metavar="RUN", help="only export RUN (already trained)")
    ap.add_argument(
        "--stage", type=int, choices=range(1, len(STAGES) + 1), help="run only this stage"
    )
    args = ap.parse_args()
    command = "python bench/train_base.py " + " ".join(sys.argv[1:])
    if args.export:
        run = Path(args.export)
        record_file = run / "base_training.json"
        record = json.loads(record_file.read_text()) if record_file.exists() else {}
    else:
        run, shakespeare = Path(args.out), Path(args.shakespeare)
        for stage, iters in enumerate(STAGES, 1):
            if args.stage not in (None, stage):
                continue
            if stage == 1:
                run, record = train(run, shakespeare, command.strip())
            else:
                run, record = extend(run, shakespeare, command.strip(), iters)
    export(run, record)


if __name__ == "__main__":
    main()
