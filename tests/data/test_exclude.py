"""``data.exclude``: the ids an exclusion file lists leave the training split (never val), with one log line; an id
the split does not hold is an error naming the file and line."""

import logging

import pytest

from hiertree.config import load_config
from hiertree.data import DataError, build_datasets
from hiertree.data.sources import read_exclusions, without_exclusions
from hiertree.tree.taxonomy import Taxonomy
from tests.data.test_sources import _person_folder, _sources_cfg
from tests.tiny import DEMO, TINY_RUN

TAX = Taxonomy.builtin("pascal_part")


def _folder_data(root, exclude=None) -> dict:
    return {"kind": "folder", "root": str(root), "labels": {0: "background", 1: "body"}, "exclude": exclude}


def test_excluded_ids_leave_train_not_val_and_are_logged(tmp_path, caplog):
    root = _person_folder(tmp_path / "people", n_train=6, n_val=3)
    listed = tmp_path / "exclude.txt"
    listed.write_text("# wrong masks\ntrain1\n\ntrain4  # half a person\n")
    assert read_exclusions(listed) == [(2, "train1"), (4, "train4")]
    with caplog.at_level(logging.INFO, logger="hiertree"):
        train_ds, val_ds = build_datasets(_folder_data(root, str(listed)), TAX)
    assert [train_ds[i]["id"] for i in range(len(train_ds))] == ["train0", "train2", "train3", "train5"]
    assert len(val_ds) == 3
    assert "dropped 2 of 6 training samples" in caplog.text and str(listed) in caplog.text
    assert train_ds.source.mask_size(0) == (40, 50)


def test_an_unknown_id_names_the_file_and_line(tmp_path):
    root = _person_folder(tmp_path / "people")
    listed = tmp_path / "exclude.txt"
    listed.write_text("train1\nval0\n")  # val0 is a val id: the file only speaks of the training split
    with pytest.raises(DataError, match=rf"{listed}:2: sample id 'val0' is not in the training split"):
        build_datasets(_folder_data(root, str(listed)), TAX)
    with pytest.raises(DataError, match=r"data.exclude: cannot read .*missing.txt"):
        build_datasets(_folder_data(root, str(tmp_path / "missing.txt")), TAX)
    listed.write_text("".join(f"train{i}\n" for i in range(6)))
    with pytest.raises(DataError, match="excludes every one of the 6 training samples"):
        build_datasets(_folder_data(root, str(listed)), TAX)


def test_a_source_excludes_its_own_ids(tmp_path):
    listed = tmp_path / "exclude.txt"
    listed.write_text("train0\ntrain2\n")
    cfg = _sources_cfg(_person_folder(tmp_path / "people"), exclude=str(listed))
    train_ds, val_ds = build_datasets(cfg["data"], TAX)
    assert len(train_ds) == 8 + 4 and len(val_ds) == 4 + 3
    with pytest.raises(DataError, match=r"data.sources\[i\].exclude"):
        build_datasets({**cfg["data"], "exclude": str(listed)}, TAX)
    assert len(build_datasets(without_exclusions(cfg["data"]), TAX)[0]) == 8 + 6


def test_training_honours_the_exclusion_file(tmp_path, caplog, one_thread):
    from hiertree.training.engine import train

    listed = tmp_path / "exclude.txt"
    listed.write_text("0\n5\n7\n15\n")  # synthetic samples are named by index
    cfg = load_config(DEMO, [*TINY_RUN, f"train.out_dir={tmp_path / 'run'}", f"data.exclude={listed}"])
    with caplog.at_level(logging.INFO, logger="hiertree"):
        train(cfg)
    assert "dropped 4 of 16 training samples" in caplog.text
    assert "12 train / 4 val samples" in caplog.text
