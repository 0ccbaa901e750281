"""``charloom eval``: a model's loss, bits per character and perplexity on a text."""

from __future__ import annotations

import argparse
import json

from ..errors import CharloomError
from .options import add_checkpoint, add_device, add_json, add_text_source, add_unknown


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval`` to ``subparsers``."""
    e = subparsers.add_parser("eval", help="loss, bits per char and perplexity on a text")
    e.add_argument("run", metavar="RUN")
    e.add_argument("text", nargs="*", metavar="TEXT")
    add_text_source(e)
    add_json(e)
    add_unknown(e)
    add_checkpoint(e)
    add_device(e, "auto")
    e.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print one line (or one JSON object)."""
    from ..charmodel import load
    from ..corpus import read_text

    model = load(args.run, which=args.checkpoint, device=args.device)
    text, source = read_text(args.text, args.corpus, encoding=args.encoding, errors=args.errors)
    result = model.evaluate(text, unknown=args.unknown, advice="--unknown skip scores the rest")
    if result.chars == 0:
        left = " once the unknown characters are skipped" if result.skipped else ""
        raise CharloomError(
            f"the text from {source.describe()} is too short to evaluate{left} (1 char or less)"
        )
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        skipped = f"  ({result.skipped:,} unknown chars skipped)" if result.skipped else ""
        if model.vocab.end is not None:
            skipped += (
                f"  (documents mode, {model.documents_mode}: the chars include "
                f"{result.end_symbols:,} end-of-document symbols)"
            )
        print(
            f"{source.describe()}: {result.chars:,} chars  loss {result.loss:.4f} nats/char  "
            f"{result.bpc:.4f} bits/char  perplexity {result.perplexity:.3f}{skipped}"
        )
    return 0
