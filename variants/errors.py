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
