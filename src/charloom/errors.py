"""The one exception type for failures a user can fix.

Library code raises :class:`CharloomError` with a plain, one-line message that says what went
wrong and how to fix it. Only the CLI turns it into ``charloom: error: ...`` and exit status 2;
programming errors stay ordinary exceptions.
"""


class CharloomError(Exception):
    """A user-facing error: bad input, a missing file, an unusable checkpoint."""


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; the CLI exits ``128 + signum``."""

    def __init__(self, signum: int, run_dir, iteration: int) -> None:
        self.signum, self.run_dir, self.iteration = signum, run_dir, iteration
        super().__init__(
            f"interrupted at iteration {iteration}; checkpoint saved. Resume with: "
            f"charloom train --resume {run_dir}"
        )
