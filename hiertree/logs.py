"""Logging for the command-line tools: info to stdout, warnings and errors to stderr, rank 0 only.

Library modules log through ``logging.getLogger(__name__)`` (all under the ``hiertree`` logger) and
never print; a program that embeds hiertree routes or silences them like any other library's logs.
The CLIs call :func:`setup_logging` once: ``--quiet`` keeps warnings and errors, ``--verbose`` adds debug.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

__all__ = ["setup_logging", "add_verbosity", "logging_from_args"]

_HANDLER_NAME = "hiertree-cli"


class _ByLevel(logging.Handler):
    """Info and debug to ``sys.stdout``, warnings and errors to ``sys.stderr``, looked up at each record.

    Resolving the streams per record (as logging's last-resort handler does) keeps output going to
    whatever ``sys.stdout``/``sys.stderr`` are now, e.g. when a test captures them.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # a closed stream must not break training
            self.handleError(record)


class _Prefixed(logging.Formatter):
    """``hiertree: warning: ...`` for warnings and errors; info lines as they are."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"hiertree: {record.levelname.lower()}: {text}"
        return text


def setup_logging(verbosity: int = 0) -> logging.Logger:
    """Route the ``hiertree`` logger to the terminal; ``verbosity`` -1 quiet, 0 normal, 1 verbose.

    Under torchrun only rank 0 speaks below ERROR. Calling it again replaces the earlier setup.
    """
    logger = logging.getLogger("hiertree")
    for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(old)
    handler = _ByLevel()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_Prefixed("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    level = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[max(-1, min(1, verbosity))]
    if os.environ.get("RANK", "0") != "0":
        level = logging.ERROR
    logger.setLevel(level)
    return logger


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` / ``--verbose``, the same on every command."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors")
    group.add_argument("--verbose", "-v", action="store_true", help="debug messages too")


def logging_from_args(args: argparse.Namespace) -> logging.Logger:
    """:func:`setup_logging` at the verbosity :func:`add_verbosity`'s flags ask for."""
    return setup_logging(-1 if args.quiet else (1 if args.verbose else 0))
