"""``charloom info``: what a run holds - its model, vocabulary and training."""

from __future__ import annotations

import argparse
import json
import math

from .options import add_checkpoint, add_json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``info`` to ``subparsers``."""
    i = subparsers.add_parser("info", help="what a run holds: model, vocabulary, training")
    i.add_argument("run", metavar="RUN")
    add_checkpoint(i)
    add_json(i)
    i.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the summary as aligned lines, or as JSON."""
    from ..basemodel import read_card
    from ..charmodel import load

    m = load(args.run, which=args.checkpoint)
    card = read_card(m.path)
    cfg = m.config
    tr = m.training
    info = {**m.info(), "parent": m.meta.get("parent"), "card": card}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    chars = "".join(m.vocab.chars)
    shown = repr(chars if len(chars) <= 80 else chars[:80] + "...") if chars else "all 256 bytes"

    def num(key, default=None):
        # The training summary is read from disk: a damaged one must not stop the report.
        value = tr.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return value if ok else default

    def fmt(x):
        return "-" if x is None else f"{x:.4f}"

    print(f"checkpoint    {m.path}")
    print(
        f"model         {cfg.kind} {cfg.layers}x{cfg.hidden}, embed {cfg.embed}, "
        f"dropout {cfg.dropout}"
    )
    print(f"parameters    {info['parameters']:,}")
    norm = " (ASCII-normalised)" if m.ascii else ""
    if m.vocab.end is not None:
        shown += f", and the end of a document (documents mode: {m.documents_mode})"
    print(f"vocabulary    {m.vocab.kind}, {m.vocab.size} symbols{norm}: {shown}")
    print(
        f"trained       {num('iterations', 0):,} iterations, {num('chars_seen', 0):,} chars, "
        f"{num('elapsed_s', 0):.1f} s"
    )
    print(f"train loss    {fmt(num('train_loss'))} nats/char")
    best = num("best_val_loss")
    bpc = (
        f" ({best / math.log(2):.4f} bits/char, iteration {tr.get('best_iteration')})"
        if best
        else ""
    )
    print(f"best val      {fmt(best)} nats/char{bpc}")
    given = tr.get("source")
    src: dict = given if isinstance(given, dict) else {}
    paths: list = src["paths"] if isinstance(src.get("paths"), list) else []
    print(f"text          {src.get('corpus') or ', '.join(map(str, paths)) or '-'}")
    for depth, parent in enumerate(parent_chain(m.meta.get("parent"))):
        label = "parent" if depth == 0 else "  its parent"
        print(f"{label:<14}{parent}")
    print(f"charloom      {info['charloom_version']}")
    if card is not None:
        print()
        print_card(card)
    return 0


def parent_chain(record: object, limit: int = 20) -> list[str]:
    """The fine-tuning ancestry in ``config.json``'s parent record, nearest first, one line
    each (read from disk: a damaged record ends the chain, it does not stop the report)."""
    lines: list[str] = []
    while isinstance(record, dict) and len(lines) < limit:
        sha = record.get("weights_sha256")
        shown = f"{sha[:16]}..." if isinstance(sha, str) else "?"
        builtin = " (built-in)" if record.get("builtin") is True else ""
        lines.append(f"{record.get('path', '?')}{builtin}, weights sha256 {shown}")
        record = record.get("parent")
    return lines


def print_card(card: dict) -> None:
    """The model card: what the model is, how and on what it was trained, on which machine."""
    print("model card")
    if card.get("description"):
        print(f"  {card['description']}")
    given = card.get("training")
    training: dict = given if isinstance(given, dict) else {}
    rows = [
        ("command", training.get("command")),
        ("seed", training.get("seed")),
        ("iterations", training.get("iterations")),
        ("stages", training.get("stages")),
        ("best val", _nats(training.get("best_val_loss"))),
        ("wall time", f"{training['wall_s']} s" if training.get("wall_s") else None),
        ("trained", training.get("started_utc")),
    ]
    for part in card.get("data") or []:
        if isinstance(part, dict):
            chars = part.get("chars")
            size = f"{chars:,}" if isinstance(chars, int) else "?"
            rows.append(("data", f"{part.get('name')}: {size} chars"))
            rows.append(("  licence", part.get("licence")))
    for item in card.get("excluded") or []:
        rows.append(("excluded", item))
    found = card.get("machine")
    machine: dict = found if isinstance(found, dict) else {}
    if machine:
        rows.append(
            (
                "machine",
                f"{machine.get('cpu')}, {machine.get('cores')} cores, torch "
                f"{machine.get('torch')}, matmul {machine.get('matmul_gflops_fp32')} GFLOP/s fp32",
            )
        )
    rows.append(("licence", card.get("licence")))
    for key, value in rows:
        if value is not None:
            print(f"  {key:<12}{value}")


def _nats(value: object) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"{value:.4f} nats/char" if ok else None
