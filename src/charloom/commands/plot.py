"""``charloom plot``: several runs' loss curves on one figure."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``plot`` to ``subparsers``."""
    p = subparsers.add_parser(
        "plot",
        help="draw several runs' loss curves on one figure (PNG and PDF)",
        description="Compare runs: their loss curves (and learning rates) on one figure.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument(
        "--out",
        metavar="FILE",
        default="loss-compare.png",
        help="FILE.png (a .pdf is written beside it; loss-compare.png)",
    )
    p.add_argument(
        "--metric",
        choices=("both", "val", "train"),
        default="both",
        help="validation, training or both (default) curves",
    )
    p.add_argument(
        "--x",
        dest="x_axis",
        choices=("iter", "time"),
        default="iter",
        help="iterations or wall-clock seconds along the x axis",
    )
    p.add_argument("--title", default="", help="a title for the figure")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Draw the figure and say where it went."""
    from ..plot import plot_compare

    written = plot_compare(
        args.runs, args.out, metric=args.metric, x_axis=args.x_axis, title=args.title
    )
    print("charloom: wrote " + " and ".join(str(p) for p in written))
    return 0
