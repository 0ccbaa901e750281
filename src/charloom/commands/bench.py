"""``charloom bench``: the benchmark suite (``charloom.bench``), its flags parsed here once."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .options import add_json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` to ``subparsers``."""
    from ..config import BENCH_DATA_ENV

    b = subparsers.add_parser(
        "bench", help="measure training, generation and eval speed, and quality"
    )
    b.add_argument("--quick", action="store_true", help="about 4 minutes; skips the 5 m pair")
    add_json(b)
    b.add_argument(
        "--data",
        metavar="TEXT",
        help=f"text for the quality runs, such as tiny shakespeare (default: the file named by "
        f"${BENCH_DATA_ENV}, else the built-in python-docs corpus)",
    )
    b.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the suite, logging its phases on stderr; the results go to stdout as a table (or
    JSON), the quality runs' text among them."""
    from .. import bench

    data, origin = bench.choose_data(args.data)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:5.1f} s] {msg}", file=sys.stderr, flush=True)

    log(f"quality runs on {origin}")
    results = bench.run(quick=args.quick, data=data, log=log)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"machine: {results['machine']}")
        print(bench.table(results))
    return 0
