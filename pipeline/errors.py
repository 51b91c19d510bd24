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


def http_error_message(error: object) -> str:
    """Google's message in an API error answer (`{"error": {"message": ...}}`, the body of a
    googleapiclient HttpError), else the raw body or the HTTP reason, on one line."""
    import json

    content = getattr(error, "content", b"") or b""
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text.strip() or getattr(getattr(error, "resp", None), "reason", "") or ""
    return one_line(str(message) or "no message")
