"""``charloom prepare``: encode a text once into memory-mapped ids, for corpora larger than
memory."""

from __future__ import annotations

import argparse
import sys

from .options import add_text_source, setting_help


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare`` to ``subparsers``."""
    from ..vocab import VOCAB_KINDS

    p = subparsers.add_parser(
        "prepare",
        help="encode text once into memory-mapped ids, for corpora larger than memory",
        description=(
            "Encode TEXT (files, folders or glob patterns) in one streaming pass into DATA/ids.bin "
            "and DATA/meta.json; then `charloom train DATA` trains from it without loading it."
        ),
    )
    p.add_argument("text", nargs="*", metavar="TEXT")
    add_text_source(p)
    p.add_argument("--out", metavar="DATA", required=True, help="the folder to write")
    p.add_argument("--vocab", choices=VOCAB_KINDS, default="corpus", help=setting_help("vocab"))
    p.add_argument("--ascii", action="store_true", help=setting_help("ascii"))
    p.add_argument("--overwrite", action="store_true", help="replace prepared data in DATA")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Prepare the data, then say what was written and how fast."""
    import time

    from ..prepared import prepare

    start = time.perf_counter()
    data = prepare(
        args.text,
        args.out,
        vocab=args.vocab,
        ascii=args.ascii,
        corpus=args.corpus,
        encoding=args.encoding,
        errors=args.errors,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    if not args.quiet:
        seconds = time.perf_counter() - start
        size = data.source.get("bytes")
        rate = f", {size / 1e6 / seconds:.0f} MB/s" if size else ""
        print(
            f"charloom: prepared {data.length:,} ids ({data.vocab.kind} vocabulary, "
            f"{data.vocab.size} symbols, {data.dtype.name}) into {data.path} in {seconds:.1f} s"
            f"{rate}; train on it: charloom train {data.path}"
        )
        note = data.vocab.size_note()
        if note:
            print(f"charloom: {note} (prepare with --vocab bytes)", file=sys.stderr)
    return 0
