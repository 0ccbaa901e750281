"""``charloom sample``: generate text from a trained model, streamed as it is made."""

from __future__ import annotations

import argparse
import sys

from .options import add_checkpoint, add_device, finite_float, int_at_least


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sample`` to ``subparsers``."""
    s = subparsers.add_parser("sample", help="generate text from a trained model")
    s.add_argument("run", metavar="RUN", help="run directory or checkpoint folder")
    s.add_argument("--prime", default="Th", help='text to start from (default "Th")')
    s.add_argument("--length", type=int, default=200, help="new characters to generate")
    s.add_argument("--temperature", type=finite_float, default=0.8)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=finite_float, default=None)
    s.add_argument("--greedy", action="store_true", help="always take the likeliest character")
    s.add_argument("--num-samples", type=int_at_least(1), default=1)
    s.add_argument("--seed", type=int_at_least(0), default=None, help="same seed, same text")
    add_checkpoint(s)
    add_device(s, "cpu")
    s.add_argument(
        "--engine", choices=("auto", "torch", "numba"), default="auto",
        help="generation loop: compiled with numba (auto: on the CPU, once compiled; torch "
        "meanwhile), or plain torch",
    )
    s.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """One sample is written piece by piece as it is generated; several, one after another."""
    from ..charmodel import load

    model = load(args.run, which=args.checkpoint, device=args.device)
    kwargs = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
        seed=args.seed,
        engine=args.engine,
    )
    out = sys.stdout
    if args.num_samples == 1:
        stream = model.stream(args.prime, args.length, **kwargs)  # validates before printing
        first = next(stream, "")
        out.write(model.normalise(args.prime) + first)
        out.flush()
        for piece in stream:
            out.write(piece)
            out.flush()
        out.write("\n")
    else:
        texts = model.sample(args.prime, args.length, num_samples=args.num_samples, **kwargs)
        for n, text in enumerate(texts):
            if n:
                out.write("\n")
            out.write(text + "\n")
    out.flush()
    return 0
