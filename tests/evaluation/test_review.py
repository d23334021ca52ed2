"""Bad-sample review (hiertree.evaluation.review, hiertree-review): the scores by hand, a planted wrong mask ranked
first by loss on a tiny trained run, and the command's files."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hiertree.cli.review import main as review_main
from hiertree.config import load_config
from hiertree.data import build_datasets
from hiertree.evaluation.review import head_disagreement, rank
from hiertree.inference.predictor import Predictor, log_probs
from tests.tiny import DEMO, TINY_RUN

pytestmark = pytest.mark.usefixtures("one_thread")


def test_head_disagreement_by_hand(pascal):
    # pascal_part: L0 background/body, L1 background/upper/lower, L2 the leaves; torso is under upper under body
    l0 = [pascal.classes(0).index("body")] * 3 + [pascal.classes(0).index("background")]
    l1 = [pascal.classes(1).index("upper_body")] * 2 + [pascal.classes(1).index("lower_body")] * 2
    l2 = [pascal.classes(2).index("torso")] + [pascal.classes(2).index("low_leg")] * 3
    raw = [torch.tensor([v]).view(1, 1, 4) for v in (l0, l1, l2)]
    # pixel 0 consistent; 1: low_leg under upper_body; 2: consistent; 3: lower_body under background
    assert head_disagreement(raw, pascal) == pytest.approx(0.5)


def test_rank_orders_by_the_mean_of_the_score_ranks():
    rows = [{"id": "a", "loss": 3.0, "heads": 0.1, "flip": 0.0}, {"id": "b", "loss": 1.0, "heads": 0.5, "flip": 0.2},
            {"id": "c", "loss": 0.5, "heads": 0.0, "flip": 0.1}]
    ranked = rank(rows)
    assert [r["id"] for r in ranked] == ["b", "a", "c"]  # b: ranks 2, 1, 1; a: 1, 2, 3; c: 3, 3, 2
    assert [r["rank_loss"] for r in ranked] == [2, 1, 3] and [r["rank"] for r in ranked] == [1, 2, 3]


def _planted_folder(root: Path, tiny_run: Path) -> str:
    """Eight synthetic figures as a folder dataset (masks hold node ids); in one of them, ``bad``, every pixel is
    labelled with the class the tiny model finds least likely there. Returns that id."""
    cfg = load_config(DEMO, TINY_RUN)
    _, val_ds = build_datasets({**cfg["data"], "synthetic": {**cfg["data"]["synthetic"], "num_val": 8}},
                               Predictor(tiny_run, backend="torch", device="cpu").taxonomy)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "masks").mkdir()
    runner = Predictor(tiny_run, backend="torch", device="cpu").runner
    ids = []
    for i in range(len(val_ds)):
        sample = val_ds[i]
        sid = "bad" if i == 5 else f"ok{i}"
        image, mask = sample["image"].permute(1, 2, 0).numpy(), sample["mask"].numpy().astype(np.uint8)
        if sid == "bad":
            mask = log_probs(runner, sample["image"][None].float())[-1][0].argmin(0).numpy().astype(np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"{sid}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{sid}.png")
        ids.append(sid)
    (root / "train_id.txt").write_text("\n".join(ids) + "\n")
    return "bad"


def test_review_ranks_a_planted_wrong_mask_first_by_loss(tiny_run, tmp_path, capsys):
    root = tmp_path / "data"
    planted = _planted_folder(root, tiny_run)
    out = tmp_path / "review"
    code = review_main(["--checkpoint", str(tiny_run), "--out", str(out), "--top", "3", "--backend", "torch",
                        "--device", "cpu", "data.kind=folder", f"data.root={root}", "data.labels=null"])
    assert code == 0, capsys.readouterr().err
    with (out / "review.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["source"] for r in rows} == {"train"}
    by_loss = sorted(rows, key=lambda r: int(r["rank_loss"]))
    assert by_loss[0]["id"] == planted
    # a 2-step model is close to uniform (loss near ln 7 everywhere), so the margin is modest but deterministic
    others = [float(r["loss"]) for r in by_loss[1:]]
    assert float(by_loss[0]["loss"]) > max(others) and float(by_loss[0]["loss"]) > 1.05 * np.mean(others)
    assert all(0.0 <= float(r["heads"]) <= 1.0 and 0.0 <= float(r["flip"]) <= 1.0 for r in rows)
    worst = (out / "exclude.txt").read_text().splitlines()
    assert worst == [r["id"] for r in rows[:3]]
    sheet = (out / "contact_sheet.html").read_text()
    assert sheet.count("<section>") == 3 and "pred L2" in sheet
    assert len(list((out / "thumbs").glob("*.png"))) == 3 * (2 + 3)
    assert "8 of 8 sample(s) of split 'train' ranked" in capsys.readouterr().out


def test_review_limit_and_bad_flags(tiny_run, tmp_path, capsys):
    assert review_main(["--checkpoint", str(tiny_run), "--out", str(tmp_path / "o"), "--top", "0"]) == 2
    assert "--top must be at least 1" in capsys.readouterr().err
    code = review_main(["--checkpoint", str(tiny_run), "--out", str(tmp_path / "o"), "--limit", "3", "--split", "val",
                        "--backend", "torch", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert len((tmp_path / "o" / "review.csv").read_text().splitlines()) == 1 + 3
