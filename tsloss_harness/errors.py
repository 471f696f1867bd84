"""The one base class of the errors a user can cause (bad flags, data, files, configs).

The ``tsloss`` CLI catches ``TslossError`` once and prints its one-line message; anything else is a
bug and keeps its full traceback.
"""


class TslossError(Exception):
    """An expected failure: a bad input or setting. The message is one line naming what to fix."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when empty): library errors can run
    to paragraphs, and a wrapped error's message is one line. The cause stays chained (``from err``)."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
