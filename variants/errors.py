"""The one exception type for user mistakes; the CLIs print it as one line."""

import difflib
from collections.abc import Iterable


class MbsbenchError(ValueError):
    """A user mistake: says what was wrong, the value, and what would work."""


def did_you_mean(key: str, choices: Iterable[str]) -> str:
    """Return '; did you mean 'x'?' for close matches of key, or ''."""
    close = difflib.get_close_matches(key, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most `limit` characters), or its type's name when empty."""
    lines = str(err).strip().splitlines()
    return lines[0].strip()[:limit] if lines else type(err).__name__


def error_line(err: BaseException, limit: int = 200) -> str:
    """'Type: first line of the message': how a caught error is reported in one line (a tag, a reason)."""
    return f"{type(err).__name__}: {first_line(err, limit)}" if str(err).strip() else type(err).__name__
