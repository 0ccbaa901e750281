"""``charloom viz``: one self-contained HTML page about a model reading a text."""

from __future__ import annotations

import argparse

from .options import add_checkpoint, add_device, add_text_source, add_unknown, int_at_least


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``viz`` to ``subparsers``."""
    v = subparsers.add_parser(
        "viz",
        help="an HTML page showing the model's units, predictions and surprisal on a text",
        description=(
            "Write one self-contained HTML page: the text coloured by a hidden unit, the units "
            "found to follow simple text features, the top-5 next-character predictions and "
            "the surprisal of every character."
        ),
    )
    v.add_argument("run", metavar="RUN", help="run directory or checkpoint folder")
    v.add_argument("text", nargs="*", metavar="TEXT", help="files, folders or glob patterns")
    add_text_source(v)
    v.add_argument("--out", metavar="FILE", default="viz.html", help="the page (viz.html)")
    v.add_argument("--layer", type=int, default=None, help="only this layer (1 = the lowest)")
    v.add_argument(
        "--state", choices=("h", "c"), default=None, help="only the hidden (h) or cell (c) state"
    )
    v.add_argument("--unit", type=int, default=None, help="the unit shown first (0-based)")
    v.add_argument("--start", type=int_at_least(0), default=0, help="skip this many characters")
    v.add_argument(
        "--max-chars", type=int, default=None, help="characters shown (3000; at most 4096)"
    )
    add_unknown(v)
    add_checkpoint(v)
    add_device(v, "cpu")
    v.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Write the page and summarise it in one line."""
    from ..corpus import read_text
    from ..viz import DEFAULT_MAX_CHARS, write_page

    text, source = read_text(args.text, args.corpus, encoding=args.encoding, errors=args.errors)
    page = write_page(
        args.run,
        text,
        args.out,
        which=args.checkpoint,
        device=args.device,
        layer=args.layer,
        state=args.state,
        unit=args.unit,
        start=args.start,
        max_chars=args.max_chars if args.max_chars is not None else DEFAULT_MAX_CHARS,
        unknown=args.unknown,
    )
    cut = " (truncated)" if page.truncated else ""
    skipped = f" ({page.skipped:,} unknown chars skipped)" if page.skipped else ""
    print(
        f"charloom: wrote {page.path} ({page.bytes / 1e6:.1f} MB): {page.chars:,} chars of "
        f"{source.describe()}{cut}{skipped}, {page.units:,} units, mean surprisal "
        f"{page.mean_bits:.4f} bits/char"
    )
    return 0
