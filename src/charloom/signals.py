"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM.

The first signal asks training to stop after the current step and write a checkpoint; a second
one leaves at once - safe, because every checkpoint is written atomically: the command line
leaves the process, the Python API raises ``KeyboardInterrupt`` (a notebook's kernel survives).
The caller's handlers come back when the block ends.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

#: What a second signal does: leave the process, or raise ``KeyboardInterrupt``.
SECOND_SIGNAL = ("exit", "raise")


@dataclass
class StopRequest:
    """The signal that asked the run to stop (``None``: none yet), and what a second one does:
    ``"exit"`` leaves the process at once (the command line), ``"raise"`` raises
    ``KeyboardInterrupt`` (the Python API: a notebook's kernel survives)."""

    signum: int | None = None
    second: str = "exit"


@contextmanager
def stop_on_signals(request: StopRequest, announce: bool = True) -> Iterator[StopRequest]:
    """Within the block, SIGINT/SIGTERM set ``request.signum`` instead of raising (``announce``:
    say so on stderr); a second signal leaves at once, as ``request.second`` says. Outside the
    main thread signals cannot be caught: nothing changes."""
    if request.second not in SECOND_SIGNAL:
        raise ValueError(f"second must be one of {SECOND_SIGNAL}, not {request.second!r}")
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: object) -> None:
        if request.signum is not None:
            if request.second == "raise":
                raise KeyboardInterrupt
            os._exit(128 + signum)
        request.signum = signum
        if announce:
            print(
                "\ncharloom: stopping after this step and saving a checkpoint "
                "(press Ctrl-C again to quit at once)",
                file=sys.stderr,
                flush=True,
            )

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
