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
    """The signal that asked the run to stop (``None``: none yet)."""

    signum: int | None = None


@contextmanager
def stop_on_signals(
    request: StopRequest, announce: bool = True, second: str = "exit"
) -> Iterator[StopRequest]:
    """Within the block, SIGINT/SIGTERM set ``request.signum`` instead of raising (``announce``:
    say so on stderr). A second signal leaves at once: ``second="exit"`` ends the process,
    ``"raise"`` raises ``KeyboardInterrupt``. Outside the main thread signals cannot be caught:
    nothing changes."""
    if second not in SECOND_SIGNAL:
        raise ValueError(f"second must be one of {SECOND_SIGNAL}, not {second!r}")
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: object) -> None:
        if request.signum is not None:
            if second == "raise":
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
