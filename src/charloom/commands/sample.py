"""``charloom sample``: generate text from a trained model, streamed as it is made."""

from __future__ import annotations

import argparse
import sys

from .options import add_checkpoint, add_device, finite_float, int_at_least


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sample`` to ``subparsers``."""
    s = subparsers.add_parser("sample", help="generate text from a trained model")
    s.add_argument("run", metavar="RUN", help="run directory or checkpoint folder")
    s.add_argument(
        "--prime",
        default=None,
        help='text to start from (default "Th"; documents-mode runs: none, and each sample is '
        "a document beginning with the prime)",
    )
    s.add_argument(
        "--length",
        type=int,
        default=200,
        help="new characters to generate (documents-mode runs: the most per document)",
    )
    s.add_argument("--temperature", type=finite_float, default=0.8)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=finite_float, default=None)
    s.add_argument("--greedy", action="store_true", help="always take the likeliest character")
    s.add_argument("--num-samples", type=int_at_least(1), default=1)
    s.add_argument("--seed", type=int_at_least(0), default=None, help="same seed, same text")
    add_checkpoint(s)
    add_device(s, "cpu")
    s.add_argument(
        "--engine",
        choices=("auto", "torch", "numba"),
        default="auto",
        help="generation loop: compiled with numba (auto: on the CPU, once compiled; torch "
        "meanwhile), or plain torch",
    )
    s.add_argument(
        "--novel",
        action="store_true",
        help="documents-mode runs: drop samples that the training text holds, and draw more "
        "in their place (says how many were dropped)",
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
    if model.vocab.end is not None or args.novel:
        return _documents(model, args, kwargs)
    if args.num_samples == 1:
        prime = model.default_prime(args.prime)
        stream = model.stream(prime, args.length, **kwargs)  # validates before printing
        first = next(stream, "")
        out.write(model.normalise(prime) + first)
        out.flush()
        for piece in stream:
            out.write(piece)
            out.flush()
        out.write("\n")
    else:
        prime = model.default_prime(args.prime)
        texts = model.sample(prime, args.length, num_samples=args.num_samples, **kwargs)
        for n, text in enumerate(texts):
            if n:
                out.write("\n")
            out.write(text + "\n")
    out.flush()
    return 0


def _documents(model, args: argparse.Namespace, kwargs: dict) -> int:
    """Documents mode: whole documents, one per line (a blank line between multi-line ones),
    and on stderr what a user should know: documents cut at the cap, samples dropped."""
    got = model.documents(
        args.prime, args.length, num_samples=args.num_samples, novel=args.novel, **kwargs
    )
    multi = model.documents_mode != "lines" or any("\n" in t for t in got.texts)
    for n, text in enumerate(got.texts):
        if n and multi:
            sys.stdout.write("\n")
        sys.stdout.write(text + "\n")
    sys.stdout.flush()
    capped = got.ended.count(False)
    if capped:
        print(
            f"charloom: {capped} of {len(got.texts)} document(s) reached --length "
            f"{args.length} before their end and were cut there",
            file=sys.stderr,
        )
    if args.novel:
        short = len(got.texts) < args.num_samples
        print(
            f"charloom: --novel dropped {got.dropped} of the {got.drawn} sample(s) drawn as "
            "already in the training text"
            + (
                f"; only {len(got.texts)} novel document(s) in {got.rounds} rounds" if short else ""
            ),
            file=sys.stderr,
        )
    return 0
