"""The one base class of the errors a user can cause (bad flags, data, files, configs).

The ``tsloss`` CLI catches ``TslossError`` once and prints its one-line message; anything else is a
bug and keeps its full traceback.
"""


class TslossError(Exception):
    """An expected failure: a bad input or setting. The message is one line naming what to fix."""
