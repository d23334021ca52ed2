"""hiertree's version, in a module of its own so that anything may ask for it without importing the package's API."""

import functools
import subprocess
from pathlib import Path

__version__ = "0.1.0"


def source_revision() -> str:
    """The code this process runs: ``<version>+g<commit>[.dirty]`` in a git checkout, else the version.

    Checkpoints record it, so a run resumed under other code says so in its log.
    """
    return _revision(Path(__file__).resolve().parent)


@functools.lru_cache(maxsize=None)
def _revision(package: Path) -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=package, capture_output=True, text=True,
                              timeout=10)
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", Path(__file__).name], cwd=package,
                                 capture_output=True, text=True, timeout=10)
        if head.returncode or tracked.returncode:  # not a checkout, or an installed copy inside someone's repository
            return __version__
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", str(package)],
                               cwd=package, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git on this machine
        return __version__
    return f"{__version__}+g{head.stdout.strip()}{'.dirty' if dirty.stdout.strip() else ''}"
