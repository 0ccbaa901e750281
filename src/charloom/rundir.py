"""The run directory: what a training run writes, where, and how it is read back.

One home for the layout, so that training, plotting, ``charloom info`` and resuming agree::

    RUN/
      latest/  best/     checkpoints (see ``checkpoint.py``)
      metrics.jsonl      one JSON object per log line and per evaluation
      samples.txt        the samples drawn during training, each under a header
      loss.png loss.pdf  the loss curves, redrawn as training goes
      tensorboard/       only with --tensorboard

A run that crashed after its last checkpoint is resumed from that checkpoint, so the metrics and
samples written after it are cut off first (:func:`truncate_after`): they will be written again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from .errors import CharloomError

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.txt"
SAMPLE_HEADER = "--- iteration {} ---"  # heads each sample in samples.txt
PLOT_FILES = ("loss.png", "loss.pdf")
TENSORBOARD_DIR = "tensorboard"
RUNS_ROOT = "runs"
# Checkpoint folder names (``checkpoint.py`` writes them; listed here to recognise a run).
LATEST = "latest"
BEST = "best"


def looks_like_run(path: Path) -> bool:
    """Whether folder ``path`` holds something only a charloom run writes."""
    names = {p.name for p in path.iterdir()}
    return bool(names & {LATEST, BEST, f"{LATEST}.old", METRICS_FILE})


def new_run_dir(out: str | os.PathLike | None, name: str, overwrite: bool = False) -> Path:
    """Where a new run writes. An explicit ``out`` that exists and is not empty is refused unless
    ``overwrite`` (and then only if it is a charloom run); without ``out``, ``runs/<name>`` gets
    a numeric suffix rather than replacing anything. Nothing is created here."""
    if out is None:
        base = Path(RUNS_ROOT) / name
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        return path
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise CharloomError(f"--out {str(out)!r} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise CharloomError(
                f"run directory {str(out)!r} already exists; use --resume {out} to continue it, "
                "--overwrite to replace it, or another --out"
            )
        if not looks_like_run(path):
            raise CharloomError(
                f"{str(out)!r} is not empty and is not a charloom run; refusing to overwrite it"
            )
    return path


def clear_run_dir(path: Path) -> None:
    """Empty ``path`` (a run being replaced with ``--overwrite``; checked by new_run_dir)."""
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def default_name(corpus: str | None, paths: tuple[str, ...] | list[str]) -> str:
    """A run name from what it trains on: the built-in corpus, or the first file's stem."""
    if corpus:
        return corpus
    stem = Path(paths[0]).stem if paths else "run"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in stem) or "run"


# --- metrics.jsonl ---------------------------------------------------------------------------
def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file, oldest first (a torn last line is skipped)."""
    records = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash
                if isinstance(rec, dict):
                    records.append(rec)
    except FileNotFoundError:
        return []
    return records


def append_metric(path: Path, record: dict) -> None:
    """Add one record to a ``metrics.jsonl`` file."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def run_metrics(run: str | os.PathLike) -> list[dict]:
    """The metrics of a run directory (or of the run holding a checkpoint folder)."""
    p = Path(run)
    if not p.exists():
        raise CharloomError(f"no such run: {str(run)!r}")
    for folder in (p, p.parent):
        if (folder / METRICS_FILE).is_file():
            records = read_metrics(folder / METRICS_FILE)
            if not records:
                raise CharloomError(f"{str(run)!r} has not recorded any metrics yet")
            return records
    raise CharloomError(f"{str(run)!r} has no {METRICS_FILE}: is it a charloom run directory?")


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def truncate_metrics(path: Path, iteration: int) -> None:
    """Drop the metrics recorded after ``iteration``."""
    if path.exists():
        keep = [r for r in read_metrics(path) if r.get("iter", 0) <= iteration]
        _replace_text(path, "".join(json.dumps(r) + "\n" for r in keep))


# --- samples.txt -----------------------------------------------------------------------------
_SAMPLE_HEADER = re.compile(
    "^" + re.escape(SAMPLE_HEADER).replace(re.escape("{}"), r"(\d+)") + "$", re.MULTILINE
)


def append_sample(path: Path, iteration: int, text: str) -> None:
    """Add the sample drawn at ``iteration`` to a ``samples.txt`` file."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"{SAMPLE_HEADER.format(iteration)}\n{text}\n\n")


def truncate_samples(path: Path, iteration: int) -> None:
    """Drop the samples written after ``iteration``."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    for m in _SAMPLE_HEADER.finditer(text):
        if int(m.group(1)) > iteration:
            _replace_text(path, text[: m.start()])
            return


def truncate_after(run_dir: Path, iteration: int) -> None:
    """Cut ``run_dir``'s metrics and samples back to ``iteration`` (a resumed checkpoint's)."""
    truncate_metrics(run_dir / METRICS_FILE, iteration)
    truncate_samples(run_dir / SAMPLES_FILE, iteration)
