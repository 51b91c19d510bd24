"""The one way an error becomes the one-line message users see.

Standard library only: the trainer and base images carry it.
"""
from __future__ import annotations


def one_line(error: BaseException | str) -> str:
    """The error's text with all whitespace (newlines included) collapsed to single spaces;
    an exception with no text gives its type name."""
    text = " ".join(str(error).split())
    if text or isinstance(error, str):
        return text
    return type(error).__name__
