"""What several commands share, defined once: argparse value types, and the options that mean
the same thing wherever they appear (``--checkpoint``, ``--device``, the text source, ``--json``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from ..errors import CharloomError

#: The checkpoints a run directory holds: the one with the lowest validation loss, and the last.
CHECKPOINTS = ("best", "latest")


def int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``lo``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, not {value}")
        return value

    return parse


def finite_float(text: str) -> float:
    """An argparse type: a number that is not ``nan`` or ``inf``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def from_library(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a library converter that raises :class:`CharloomError`, so that
    argparse reports the converter's own message rather than a generic 'invalid value'."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except CharloomError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def add_text_source(p: argparse.ArgumentParser) -> None:
    """``--corpus``, ``--encoding``, ``--errors``: where a command's TEXT comes from when it is
    not files, and how files are decoded."""
    p.add_argument(
        "--corpus", metavar="NAME", help="a built-in corpus instead of files (python-docs)"
    )
    p.add_argument("--encoding", default="utf-8", help="text encoding of the files (default utf-8)")
    p.add_argument(
        "--errors",
        default="strict",
        choices=("strict", "replace", "ignore"),
        help="what to do with undecodable bytes (default: strict, stop with an error)",
    )


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    """``--checkpoint best|latest``: which of a run's checkpoints to load."""
    p.add_argument(
        "--checkpoint",
        choices=CHECKPOINTS,
        default="best",
        help="the best (lowest validation loss, the default) or the latest checkpoint",
    )


def add_device(p: argparse.ArgumentParser, default: str) -> None:
    """``--device``, with the default that suits the command."""
    from ..config import DEVICES

    p.add_argument(
        "--device", choices=DEVICES, default=default, help=f"where to run (default {default})"
    )


def add_json(p: argparse.ArgumentParser) -> None:
    """``--json``: the result as one JSON object, for programs."""
    p.add_argument("--json", action="store_true", help="print one JSON object")


def setting_help(name: str) -> str:
    """The help of training setting ``name``, for a command that offers the same setting."""
    from ..config import settings

    return next(f.metadata["help"] for f in settings() if f.name == name)


#: What ``--unknown skip`` does, said once for every command that offers it.
UNKNOWN_HELP = (
    "characters outside the model's vocabulary: error (stop and name them, the default) or "
    "skip (leave them out of the text: they are neither predicted nor read, and the state goes "
    "from the character before one straight to the character after it; the count is reported)"
)


def add_unknown(p: argparse.ArgumentParser) -> None:
    """``--unknown error|skip``: what a command that reads a text through a model does with
    characters the model does not know."""
    from ..vocab import UNKNOWN_CHOICES

    p.add_argument("--unknown", choices=UNKNOWN_CHOICES, default="error", help=UNKNOWN_HELP)
