"""The evaluation report: markdown numbers equal the JSON, figures open with the layout's sizes."""

import json
import math
import os
import re
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

pytest.importorskip("matplotlib", reason="hiertree.evaluation.report draws with matplotlib (pip install hiertree[report])")
from PIL import Image

from hiertree.config import load_config
from hiertree.data import build_datasets, pad_collate
from hiertree.evaluation.evaluate import evaluate
from hiertree.inference.predictor import predict_images
from tiny import tiny_model
from hiertree.evaluation.report import HEADER_H, LABEL_W, PAD, TILE, collect_samples, image_score, write_report
from hiertree.tree.taxonomy import Taxonomy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(ROOT / "configs/demo.yaml", ["data.synthetic.size=64", "data.synthetic.num_val=6", "data.synthetic.num_train=1"])
    taxonomy = Taxonomy.load(cfg["taxonomy"])
    _, val = build_datasets(cfg["data"], taxonomy, seed=0)
    model = tiny_model(taxonomy)  # varied labels from an untrained model
    loader = DataLoader(val, batch_size=3, collate_fn=lambda b: pad_collate(b, taxonomy.ignore_index))
    result = evaluate(model, loader, taxonomy, torch.device("cpu"))
    result = json.loads(json.dumps(result))  # exactly what hiertree-eval writes and reads back (NaN included)
    return model, val, taxonomy, result


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _close(text, value):
    if value is None:
        return text == "n/a"
    if math.isnan(value):
        return text == "nan"
    return abs(float(text) - value) <= 5e-5 and text == f"{value:.4f}"


def test_markdown_numbers_equal_the_json(setup, tmp_path):
    model, val, taxonomy, result = setup
    md = write_report(result, taxonomy, tmp_path).read_text()
    rows = [_cells(l) for l in md.splitlines() if re.match(r"\| L\d+ \|", l)]
    assert len(rows) == taxonomy.num_levels
    for cells, lv, raw in zip(rows, result["tree"]["levels"], result["raw"]["levels"]):
        assert cells[0] == f"L{lv['level']}" and int(cells[1]) == len(lv["classes"])
        assert _close(cells[2], lv["mIoU"]) and _close(cells[3], lv["mIoU_with_background"])
        assert _close(cells[4], lv["pixel_accuracy"]) and _close(cells[5], raw["mIoU"])
    # per-class IoU tables, one per level, every class once
    sections = re.split(r"^### ", md, flags=re.M)[1:]
    assert len(sections) == taxonomy.num_levels
    for section, lv in zip(sections, result["tree"]["levels"]):
        table = [_cells(l) for l in section.splitlines() if l.startswith("| ") and not l.startswith("| class") and "---" not in l]
        assert [c[0] for c in table] == lv["classes"]
        for name, value in table:
            assert _close(value, lv["iou"][name]), (name, value, lv["iou"][name])
    assert any(v is None for lv in result["tree"]["levels"] for v in lv["iou"].values()) == ("| n/a |" in md)
    assert "![iou_by_level](iou_by_level.png)" in md


def test_figures_exist_with_sensible_sizes(setup, tmp_path):
    model, val, taxonomy, result = setup
    write_report(result, taxonomy, tmp_path)
    with Image.open(tmp_path / "iou_by_level.png") as im:
        assert im.width >= 600 and im.height >= 300
        colors = {tuple(c) for c in np.asarray(im.convert("RGB")).reshape(-1, 3)}
    bar_colors = {tuple(int(v) for v in c) for c in taxonomy.colors(taxonomy.num_levels - 1)}
    assert len(bar_colors & colors) >= 3  # leaf bars drawn in the taxonomy's colours
    for l in range(taxonomy.num_levels):
        with Image.open(tmp_path / f"confusion_L{l}.png") as im:
            assert im.width >= 300 and im.height >= 300
    assert not (tmp_path / "worst_best.png").exists()


def test_collect_samples_and_worst_best_grid(setup, tmp_path):
    model, val, taxonomy, result = setup
    samples = collect_samples(model, val, taxonomy, "cpu", k=2, batch_size=4)
    assert len(samples) == 4
    scores = [s["score"] for s in samples]
    every = []
    for i in range(len(val)):
        item = val[i]
        pred = predict_images(model, [item["image"].numpy().transpose(1, 2, 0)])[0]
        every.append(image_score(item["mask"].numpy(), pred["leaf"], taxonomy))
    assert scores[:2] == sorted(every)[:2] and scores[2:] == sorted(every, reverse=True)[:2]
    s = samples[0]
    assert s["image"].shape[2] == 3 and s["image"].dtype == np.uint8
    assert s["target"].shape == s["image"].shape[:2] and len(s["levels"]) == taxonomy.num_levels

    write_report(result, taxonomy, tmp_path, samples=samples, k=2)
    rows, cols = 4, 1 + 2 * taxonomy.num_levels
    with Image.open(tmp_path / "worst_best.png") as im:
        grid = np.asarray(im.convert("RGB"))
    assert grid.shape[:2] == (HEADER_H + rows * (TILE + PAD) + PAD, LABEL_W + cols * (TILE + PAD) + PAD)
    # row 0, the truth and prediction tiles at the finest level hold exactly the colourised maps
    y = HEADER_H + PAD
    leaf_pal = {tuple(int(v) for v in c) for c in taxonomy.colors(-1)} | {(128, 128, 128), (255, 255, 255)}
    for col in (cols - 2, cols - 1):
        x = LABEL_W + col * (TILE + PAD) + PAD
        tile = grid[y + 2 : y + TILE - 2, x + 2 : x + TILE - 2]
        used = {tuple(c) for c in tile.reshape(-1, 3)}
        assert used <= leaf_pal and len(used) >= 2, (col, used)
    # the gaps between tiles are white
    assert (grid[y : y + TILE, LABEL_W + TILE + PAD + 1] == 255).all()
    assert "![worst_best](worst_best.png)" in (tmp_path / "report.md").read_text()


def test_mismatched_taxonomy_is_refused(setup, tmp_path):
    _, _, _, result = setup
    other = Taxonomy.from_yaml_text("tree: {background: 0, thing: {a: 1, b: 2}}")
    with pytest.raises(ValueError, match="do not match taxonomy"):
        write_report(result, other, tmp_path)
