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
    from ..charmodel import load

    m = load(args.run, which=args.checkpoint)
    cfg = m.config
    tr = m.training
    info = m.info()
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
    print(f"charloom      {info['charloom_version']}")
    return 0
