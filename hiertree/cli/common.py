"""What every hiertree command shares: one-line errors (a data-loader worker's traceback unwrapped)."""

from __future__ import annotations

import sys

__all__ = ["one_line", "fail"]


def one_line(err: Exception) -> str:
    """The error's own message; one raised in a data-loader worker arrives wrapped with the worker's traceback."""
    text = str(err)
    if "\nOriginal Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        prefix = f"{type(err).__module__}.{type(err).__name__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last
    return text


def fail(err: Exception) -> int:
    print(f"hiertree: error: {one_line(err)}", file=sys.stderr)
    return 2
