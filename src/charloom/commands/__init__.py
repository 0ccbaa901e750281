"""The ``charloom`` command: one module per subcommand, each with ``register(subparsers)`` and
``run(args)``. Commands translate flags into calls of the Python API; the rules are the
library's. Errors are reported here, once: a :class:`CharloomError` becomes one line,
``charloom: error: ...``, and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from .._version import __version__
from ..errors import CharloomError, TrainingInterrupted
from . import bench, evaluate, info, plot, prepare, sample, serve, train, viz

#: The subcommands, in the order ``charloom --help`` lists them.
COMMANDS = (train, prepare, sample, evaluate, bench, info, viz, plot, serve)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2, no usage dump
        raise CharloomError(f"{message} (see: {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``charloom`` and all its subcommands."""
    parser = _Parser(
        prog="charloom",
        description="Character-level recurrent language models: train, sample, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"charloom {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        command.register(sub)
    return parser


def _one_line(message: str) -> str:
    """An error message as one line: line breaks (from a file name or an argument) escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def main(argv: list[str] | None = None) -> int:
    """Run ``charloom ARGV``; the exit status (2 for any error the user can fix)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = sys.argv[1:] if argv is None else list(argv)  # for `train --nproc`
        if not args.command:  # plain `charloom`: show what it can do
            parser.print_help()
            return 0
        return args.handler(args)
    except CharloomError as exc:
        print(f"charloom: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"charloom: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("charloom: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (charloom sample ... | head): not an error of ours. Point stdout
        # at /dev/null so the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:
        # A disk that filled up, a folder that became unwritable: say which file, no traceback.
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        message = _one_line(f"cannot write or read{where}: {exc.strerror or exc}")
        print(f"charloom: error: {message}", file=sys.stderr)
        return 2
