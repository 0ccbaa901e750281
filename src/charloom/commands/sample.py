"""``charloom sample``: generate text from a trained model, streamed as it is made."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .options import add_checkpoint, add_device, finite_float, int_at_least

if TYPE_CHECKING:
    from ..charmodel import CharModel
    from ..cpusample import ArrayModel


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sample`` to ``subparsers``."""
    from ..nextchar import DEFAULT_LENGTH, DEFAULT_PRIME, SampleSettings

    s = subparsers.add_parser("sample", help="generate text from a trained model")
    s.add_argument("run", metavar="RUN", help="run directory or checkpoint folder")
    s.add_argument(
        "--prime",
        default=None,
        help=f'text to start from (default "{DEFAULT_PRIME}"; documents-mode runs: none, and '
        "each sample is a document beginning with the prime)",
    )
    s.add_argument(
        "--length",
        type=int,
        default=DEFAULT_LENGTH,
        help="new characters to generate (documents-mode runs: the most per document)",
    )
    s.add_argument("--temperature", type=finite_float, default=SampleSettings.temperature)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=finite_float, default=None)
    s.add_argument("--greedy", action="store_true", help="always take the likeliest character")
    s.add_argument("--num-samples", type=int_at_least(1), default=1)
    s.add_argument("--seed", type=int_at_least(0), default=None, help="same seed, same text")
    add_checkpoint(s)
    add_device(s, "cpu")
    s.add_argument(
        "--engine",
        choices=("auto", "numpy", "numba", "torch"),
        default="auto",
        help="generation loop: auto (on the CPU: numpy at once, then the numba-compiled loop "
        "once loaded; torch on a GPU), numpy, numba (waits for the compiler), or torch",
    )
    s.add_argument(
        "--novel",
        action="store_true",
        help="documents-mode runs: drop samples that the training text holds, and draw more "
        "in their place (says how many were dropped)",
    )
    s.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """One sample is written piece by piece as it is generated; several, one after another.

    On the CPU the run is read as numpy arrays and sampled without importing torch (seconds of
    start-up saved: ``cpusample.py``); on a GPU, with ``--engine torch``, or for weights numpy
    cannot read, through ``charloom.load``. Both give the same text for the same seed."""
    from ..nextchar import DEFAULT_PRIME, SampleSettings

    settings = SampleSettings(args.temperature, args.top_k, args.top_p, args.greedy)
    model: ArrayModel | CharModel | None = None
    if args.device == "cpu" and args.engine != "torch":
        from ..cpusample import load as load_arrays

        model = load_arrays(args.run, which=args.checkpoint)
    if model is None:
        from ..charmodel import load

        model = load(args.run, which=args.checkpoint, device=args.device)
    assert model is not None
    out = sys.stdout
    if model.vocab.end is not None or args.novel:
        return _documents(_torch_model(model, args), args)
    prime = DEFAULT_PRIME if args.prime is None else args.prime
    pieces = model.pieces(
        prime, args.length, settings, args.num_samples, args.seed, args.engine
    )  # checks the request before anything is printed
    prime = model.normalise(prime)
    if args.num_samples == 1:
        out.write(prime)
        for block in pieces:
            out.write(block[0])
            out.flush()
        out.write("\n")
    else:
        from ..samplestream import whole_texts

        for n, text in enumerate(whole_texts(prime, pieces, args.num_samples)):
            if n:
                out.write("\n")
            out.write(text + "\n")
    out.flush()
    return 0


def _torch_model(model: ArrayModel | CharModel, args: argparse.Namespace) -> CharModel:
    """``model`` as a :class:`CharModel` (documents mode samples through it)."""
    from ..charmodel import CharModel, load

    if isinstance(model, CharModel):
        return model
    return load(args.run, which=args.checkpoint, device=args.device)


def _documents(model: CharModel, args: argparse.Namespace) -> int:
    """Documents mode: whole documents, one per line (a blank line between multi-line ones),
    and on stderr what a user should know: documents cut at the cap, samples dropped."""
    got = model.documents(
        args.prime,
        args.length,
        args.temperature,
        args.top_k,
        args.top_p,
        args.greedy,
        num_samples=args.num_samples,
        seed=args.seed,
        engine=args.engine,
        novel=args.novel,
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
