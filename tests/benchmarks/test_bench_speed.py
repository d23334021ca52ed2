"""benchmarks/speed.py times each model doing its own real work, and reports what it measured."""

import json
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("segmentation_models_pytorch", reason="smp is the benchmark-only extra (pip install hiertree[bench])")

from benchmarks.speed import hiertree_step, main, make_models, smp_step  # noqa: E402
from hiertree.config import load_config  # noqa: E402
from hiertree.losses import HierarchicalLoss  # noqa: E402
from hiertree.tree.taxonomy import Taxonomy  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TAX = Taxonomy.builtin("pascal_part")
CFG = load_config(ROOT / "configs/demo.yaml", ["model.decoder_channels=16", "model.skip_channels=8"])


def _batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 64, 64), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, 7, (2, 64, 64), generator=g)
    masks[:, :5] = TAX.ignore_index
    return images, masks


def test_same_seed_same_models():
    a, b = make_models(CFG, TAX), make_models(CFG, TAX)
    for name in a:
        assert all(torch.equal(x, y) for x, y in zip(a[name].state_dict().values(), b[name].state_dict().values()))


def test_smp_steps_on_one_leaf_cross_entropy_and_hiertree_on_its_full_loss():
    images, masks = _batch()
    models = make_models(CFG, TAX)
    smp = models["smp"].train()
    opt = torch.optim.SGD(smp.parameters(), lr=0.0)  # lr 0: the weights stay, only the loss is compared
    torch.manual_seed(1)  # dropout draws alike in both forward passes (smp's ASPP dropout)
    got = smp_step(smp, opt, torch.device("cpu"), "none", TAX.ignore_index)(images, masks)
    torch.manual_seed(1)
    with torch.no_grad():
        expected = F.cross_entropy(smp.net((images.float() - smp.mean) / smp.std), masks, ignore_index=255)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)

    hier = models["hiertree"].eval()  # eval: no dropout, so the reference pass is the same function
    lc = CFG["loss"]
    criterion = HierarchicalLoss(TAX, **lc)
    with torch.no_grad():
        expected, _ = criterion(hier(images), masks)
    got = hiertree_step(hier, CFG, TAX, torch.optim.SGD(hier.parameters(), lr=0.0), torch.device("cpu"), "none")(images, masks)
    assert lc["consistency_weight"] > 0 and got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_smoke_report_holds_consistent_ratios_and_provenance(tmp_path):
    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "speed-smoke-cpu.json").read_text())
    h, s = report["models"]["hiertree"], report["models"]["smp"]
    assert report["ratios"]["train_end_to_end_x"] == pytest.approx(h["train_img_s_end_to_end"] / s["train_img_s_end_to_end"], rel=0.006)
    assert report["ratios"]["cpu_infer_speedup_x"] == pytest.approx(s["cpu_infer_ms_median"] / h["cpu_infer_ms_median"], rel=0.006)
    for m, key in ((h, "cpu_infer_ms"), (s, "cpu_infer_ms"), (s, "cpu_infer_ms_channels_last")):
        lo, hi = m[key.replace("ms", "ms_spread")]
        assert lo <= m[key.replace("ms", "ms_median")] <= hi
    assert report["ratios"]["cpu_infer_speedup_vs_smp_channels_last_x"] == pytest.approx(
        s["cpu_infer_ms_median_channels_last"] / h["cpu_infer_ms_median"], rel=0.006)
    for m in (h, s):
        assert m["train_img_s_model_only"] > 0 and m["train_img_s_end_to_end"] > 0
    assert report["data_pipeline_img_s"] > 0
    assert "leaf cross-entropy" in s["step"] and "hierarchical loss" in h["step"]
    assert report["seed"] == 0 and report["command"].startswith("python benchmarks/speed.py --smoke")
    assert report["versions"]["torch"] == torch.__version__ and report["versions"]["timm"] == version("timm")
    assert set(report["versions"]) == {"python", "hiertree", "torch", "timm", "segmentation_models_pytorch", "albumentations"}
    assert len(report["source_sha256"]) == 64 and report["machine"]["cpu_count"] >= 1 and "commit" in report["git"]
