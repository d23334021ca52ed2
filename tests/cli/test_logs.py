"""CLI logging: info to stdout, warnings to stderr (prefixed), --quiet keeps only warnings, rank 0 speaks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hiertree.cli.train import main as train_main
from hiertree.logs import setup_logging
from tiny import TINY_RUN

ROOT = Path(__file__).resolve().parents[2]
TINY = [*TINY_RUN, "data.synthetic.num_train=8", "data.synthetic.num_val=2", "model.decoder_channels=8", "eval.batch_size=2"]


@pytest.fixture(autouse=True)
def _restore_logger():
    logger = logging.getLogger("hiertree")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def test_info_goes_to_stdout_and_warnings_to_stderr(capsys):
    setup_logging(0)
    log = logging.getLogger("hiertree.something")
    log.info("plain %d", 1)
    log.warning("careful %s", "now")
    log.debug("hidden")
    out, err = capsys.readouterr()
    assert out == "plain 1\n" and err == "hiertree: warning: careful now\n"


def test_quiet_verbose_and_other_ranks(capsys, monkeypatch):
    setup_logging(-1)
    logging.getLogger("hiertree.x").info("info")
    logging.getLogger("hiertree.x").warning("warn")
    assert capsys.readouterr() == ("", "hiertree: warning: warn\n")
    setup_logging(1)
    logging.getLogger("hiertree.x").debug("dbg")
    assert capsys.readouterr().out == "dbg\n"
    assert len([h for h in logging.getLogger("hiertree").handlers if h.get_name() == "hiertree-cli"]) == 1
    monkeypatch.setenv("RANK", "1")
    setup_logging(0)
    logging.getLogger("hiertree.x").warning("from rank 1")
    logging.getLogger("hiertree.x").error("rank 1 failed")
    assert capsys.readouterr() == ("", "hiertree: error: rank 1 failed\n")


def test_train_quiet_keeps_the_run_folder_line_only(tmp_path, capsys):
    args = ["--config", str(ROOT / "configs/demo.yaml"), *TINY]
    assert train_main([*args, f"train.out_dir={tmp_path / 'a'}"]) == 0
    loud = capsys.readouterr().out
    assert "train / 2 val samples" in loud and "per-class IoU" in loud
    assert train_main(["--quiet", *args, f"train.out_dir={tmp_path / 'b'}"]) == 0
    quiet = capsys.readouterr().out
    assert quiet.strip().splitlines() == [f"hiertree: run folder {tmp_path / 'b'} (best checkpoint: {tmp_path / 'b'}/best)"]
