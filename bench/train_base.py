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

- the Python documentation's reStructuredText sources (tutorial, FAQs, HOWTOs, library and
  language reference, "What's New" essays; PSF License Version 2), as Debian's
  ``python3.11-doc`` package ships them, with the markup reduced to its text
  (:func:`rst_text`); the change log, the index and the C API and distutils references are left out.
  Get them with ``apt-get download python3.11-doc && dpkg-deb -x python3.11-doc_*.deb pkg``
  and pass ``--python-docs pkg/usr/share/doc/python3.11/html/_sources``;
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
import re
import shutil
import sys
import time
from pathlib import Path

import charloom
from charloom.bench import machine
from charloom.presets import machine_rate

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_BASE = ROOT / "src" / "charloom" / "base"
SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")
PYTHON_DOCS = Path("/tmp/pydoc/x/usr/share/doc/python3.11/html/_sources")
#: Documentation sources left out: lists of issue numbers, the index, and the C API and
#: distutils references (declarations more than prose).
DOCS_LEFT_OUT = (
    "whatsnew/changelog.rst.txt",
    "genindex",
    "contents.rst.txt",
    "c-api/",
    "distutils/",
)
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
    iters=3600,
    val_fraction=0.02,
    eval_every=250,
    sample_every=1000,
    log_every=50,
    seed=1337,
    threads=2,
)
#: The iterations at the end of each stage: the first trains, each later one resumes the run.
STAGES = (3600,)


#: Directives whose block is dropped whole (no prose in them).
_DROPPED = {
    "index",
    "toctree",
    "highlight",
    "sectionauthor",
    "moduleauthor",
    "testsetup",
    "testcleanup",
    "only",
    "raw",
    "include",
    "literalinclude",
    "image",
    "figure",
    "tabularcolumns",
    "productionlist",
    "opcode",
    "c:macro",
    "audit-event-table",
    "impl-detail",
    "testoutput",
    "xmlsection",
    "rubric",
    "csv-table",
    "availability",
}
_DIRECTIVE = re.compile(r"^(\s*)\.\. ([\w:-]+)::\s*(.*)$")
_ROLE = re.compile(r":[\w:.-]+:`!?~?([^`<]*?)(?:\s*<[^`>]*>)?`")
_ADORNMENT = re.compile(r"^([=\-~^*#+\\'\".`:_])\1{2,}\s*$")


def rst_text(source: str) -> str:
    """The readable text of a reStructuredText file: roles become their text (``:func:`len` ``
    -> ``len``), literals lose their backquotes, section underlines, labels, comments, index
    entries and other blocks without prose are dropped, and a directive such as
    ``.. function:: len(s)`` keeps its argument (``len(s)``). Code examples stay as they are."""
    out: list[str] = []
    skip_indent: int | None = None  # inside a dropped block: its directive's indentation
    for line in source.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if not stripped or indent > skip_indent:
                continue
            skip_indent = None
        m = _DIRECTIVE.match(line)
        if m:
            name, argument = m.group(2), m.group(3)
            if name in _DROPPED:
                skip_indent = indent
            elif argument:
                out.append(m.group(1) + _ROLE.sub(r"\1", argument))
            continue
        if stripped.startswith(".."):  # a label, a substitution or a comment (and its block)
            skip_indent = indent
            continue
        if _ADORNMENT.match(line) or (
            stripped.startswith(":")
            and stripped.count(":") >= 2
            and stripped.split(":")[1] in _FIELD_OPTIONS
        ):
            continue
        line = _ROLE.sub(r"\1", line).replace("``", "")
        out.append(line.rstrip())
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


#: Directive options (``:module:``, ``:noindex:`` ...) dropped from the text.
_FIELD_OPTIONS = {
    "module",
    "noindex",
    "synopsis",
    "platform",
    "deprecated",
    "maxdepth",
    "numbered",
    "hidden",
    "titlesonly",
    "glob",
    "caption",
    "linenos",
    "options",
    "async",
    "abstractmethod",
    "classmethod",
    "staticmethod",
    "type",
    "value",
    "annotation",
    "final",
    "no-index",
    "emphasize-lines",
    "header",
    "widths",
}


def python_docs_text(sources: Path) -> str:
    """The text of every documentation source under ``sources`` (sorted by path), but
    :data:`DOCS_LEFT_OUT`, each reduced by :func:`rst_text`."""
    files = sorted(sources.rglob("*.rst.txt"))
    if not files:
        raise SystemExit(f"no documentation sources (*.rst.txt) under {sources}: see --python-docs")
    kept = [f for f in files if not any(x in f.as_posix() for x in DOCS_LEFT_OUT)]
    return "\n\n".join(rst_text(f.read_text(encoding="utf-8")) for f in kept)


def docs_package_version(sources: Path) -> str:
    """The Debian version of the package ``sources`` came from (its change log's first line),
    or ``"unknown"``."""
    import gzip

    for folder in sources.parents:
        log = folder / "python3.11-doc" / "changelog.Debian.gz"
        if log.exists():
            with gzip.open(log, "rt", encoding="utf-8") as f:
                first = f.readline()
            return first.split("(", 1)[1].split(")", 1)[0] if "(" in first else "unknown"
    return "unknown"


def base_text(shakespeare: Path, docs_sources: Path) -> tuple[str, list[dict]]:
    """The training text and a description of each part (name, licence, size, SHA-256). The
    Python documentation comes first, Shakespeare last, so the validation text (the run's last
    ``val_fraction``) is Shakespeare's."""
    docs = python_docs_text(docs_sources)
    raw = shakespeare.read_bytes()
    if len(raw) <= HELD_BACK_BYTES:
        raise SystemExit(f"{shakespeare} is too short to hold back {HELD_BACK_BYTES:,} bytes")
    # Cut on a byte boundary the benchmark uses too, then decode (tiny shakespeare is ASCII).
    play = raw[:-HELD_BACK_BYTES].decode("utf-8")
    parts = [
        (
            "python-docs",
            "The Python 3.11 documentation's sources (Debian's python3.11-doc package, "
            f"version {docs_package_version(docs_sources)}; markup reduced to its text; change "
            "log, index, C API and distutils left out); PSF License Version 2",
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


def train(out: Path, shakespeare: Path, docs: Path, command: str) -> tuple[Path, dict]:
    text, parts = base_text(shakespeare, docs)
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


def extend(out: Path, shakespeare: Path, docs: Path, command: str, iters: int) -> tuple[Path, dict]:
    """A later stage: resume ``out`` to ``iters`` iterations."""
    text, _ = base_text(shakespeare, docs)
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
            "documentation (tutorial, FAQs, HOWTOs, references, essays) and Shakespeare, made "
            "to be fine-tuned (charloom train TEXT --init-from base) or sampled as it is."
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
    ap.add_argument(
        "--python-docs",
        default=str(PYTHON_DOCS),
        help="the documentation sources (_sources) of Debian's python3.11-doc package",
    )
    ap.add_argument("--show-text", action="store_true", help="print the training text and stop")
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
        run, shakespeare, docs = Path(args.out), Path(args.shakespeare), Path(args.python_docs)
        if args.show_text:
            sys.stdout.write(base_text(shakespeare, docs)[0])
            return
        for stage, iters in enumerate(STAGES, 1):
            if args.stage not in (None, stage):
                continue
            if stage == 1:
                run, record = train(run, shakespeare, docs, command.strip())
            else:
                run, record = extend(run, shakespeare, docs, command.strip(), iters)
    export(run, record)


if __name__ == "__main__":
    main()
