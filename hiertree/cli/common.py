"""What every hiertree command shares: one way to end with an error (``hiertree-<name>: error: <message>``, a
data-loader worker's traceback unwrapped) and one exit status per kind of failure."""

from __future__ import annotations

import sys

__all__ = ["one_line", "fail", "warn", "EXIT_INPUT", "EXIT_SIGNAL_BASE"]

#: the command was given something it cannot use: a missing or unreadable file, a bad option, flag or value (the status
#: argparse gives a bad command line, so every usage error of every command exits alike)
EXIT_INPUT = 2
#: a run stopped by a signal exits 128 + its number, as a shell reports a signalled job (130 SIGINT, 143 SIGTERM)
EXIT_SIGNAL_BASE = 128


def one_line(err: Exception | str) -> str:
    """The error's own message; one raised in a data-loader worker arrives wrapped with the worker's traceback."""
    text = str(err)
    if "\nOriginal Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        prefix = f"{type(err).__module__}.{type(err).__name__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last
    return text


def fail(prog: str, err: Exception | str) -> int:
    """Say ``<prog>: error: <one line>`` on stderr; returns :data:`EXIT_INPUT` for the command to exit with."""
    print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
    return EXIT_INPUT


def warn(prog: str, text: str) -> None:
    """Say ``<prog>: warning: <text>`` on stderr (the command goes on)."""
    print(f"{prog}: warning: {text}", file=sys.stderr)
