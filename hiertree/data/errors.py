"""The one exception type of :mod:`hiertree.data`."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A dataset file, list or setting is invalid; the message names the file or key, the problem and the fix."""
