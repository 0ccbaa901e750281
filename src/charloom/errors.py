"""The one exception type for failures a user can fix.

Library code raises :class:`CharloomError` with a plain, one-line message that says what went
wrong and how to fix it. Only the CLI turns it into ``charloom: error: ...`` and exit status 2;
programming errors stay ordinary exceptions.
"""


class CharloomError(Exception):
    """A user-facing error: bad input, a missing file, an unusable checkpoint."""
