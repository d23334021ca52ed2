"""The benchmark scripts run end to end (a few steps on CPU) and write well-formed results."""

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT.parent / "shared" / "datasets" / "pascal-part-sample"


@pytest.fixture(autouse=True)
def _needs_smp():
    pytest.importorskip("segmentation_models_pytorch", reason="smp is the benchmark-only extra (pip install hiertree[bench])")


def test_smp_baseline_wrapper_speaks_hiertree():
    import torch

    from benchmarks.baselines import SmpFlatDeepLabV3Plus
    from hiertree.inference import decode
    from hiertree.tree.taxonomy import Taxonomy

    t = Taxonomy.builtin("pascal_part")
    model = SmpFlatDeepLabV3Plus(t).eval()
    logits = model(torch.randint(0, 256, (1, 3, 50, 70), dtype=torch.uint8))
    assert [tuple(z.shape) for z in logits] == [(1, 2, 50, 70), (1, 3, 50, 70), (1, 7, 50, 70)]
    out = decode(logits, t, flat=True)
    assert torch.equal(out["leaf"], logits[-1].argmax(1))


NEEDS_SAMPLE = pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/datasets/pascal-part-sample is absent (a user's machine)")


@NEEDS_SAMPLE
def test_quality_benchmark_smoke(tmp_path):
    import shlex

    from benchmarks.quality import SMP_NOTE, main

    argv = ["--data", str(SAMPLE), "--smoke", "--tta", "--variants", "smp", "heads_kl", "--out", str(tmp_path),
            "--runs-dir", str(tmp_path / "runs"), "model.encoder_weights=null"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "quality-smoke-cpu.json").read_text())
    assert [r["variant"] for r in report["runs"]] == ["smp", "heads_kl"]
    for r in report["runs"]:
        assert len(r["tree"]) == 3 and r["tree_consistency"] == 1.0 and 0.0 <= r["raw_consistency"] <= 1.0
        assert len(r["tta"]) == 3 and r["tta_skipped"] == [] and r["seed"] == 0
        assert isinstance(r["effective_overrides"], list) and r["effective_overrides"][-1] == "train.resume=auto"
    # the real invocation, runnable from cwd; list-valued overrides stay one item each
    assert shlex.split(report["command"])[-len(argv):] == argv and Path(report["cwd"]).is_dir()
    assert "loss.level_weights=[0, 0, 1]" in report["runs"][0]["effective_overrides"]
    # provenance
    assert set(report["versions"]) >= {"hiertree", "torch", "timm", "segmentation_models_pytorch", "albumentations"}
    assert report["versions"]["torch"] and report["versions"]["segmentation_models_pytorch"]
    assert set(report["git"]) == {"commit", "dirty"} and len(report["source_sha256"]) == 64
    assert report["machine"]["cpu"] and report["machine"]["cuda"] is None
    # the smp row describes smp's model, not hiertree's, and its run folder says it is no hiertree checkpoint
    smp, heads = report["runs"][0], report["runs"][1]
    assert "segmentation_models_pytorch" in smp["config"]["model"]["architecture"]
    assert smp["config"]["model"]["decoder_channels"] != 32 and smp["config"]["model"]["decoder_atrous_rates"]
    assert smp["config"]["hiertree_model_settings_not_applied"]["decoder_channels"] == 32  # --smoke's, for hiertree
    assert heads["config"]["model"]["decoder_channels"] == 32
    assert (tmp_path / "runs" / "smp" / SMP_NOTE).is_file() and not (tmp_path / "runs" / "heads_kl" / SMP_NOTE).exists()
    md = (tmp_path / "quality-smoke-cpu.md").read_text()
    assert "| smp | 0 |" in md and "| heads_kl | 0 |" in md and "device: CPU" in md and "test-time augmentation" in md
    assert "torch " in md and "segmentation_models_pytorch " in md and "git " in md and SMP_NOTE in md
    assert report["command"] in md


def test_quality_benchmark_refuses_model_overrides_smp_would_ignore(capsys):
    from benchmarks.quality import check_smp_overrides, main

    with pytest.raises(SystemExit) as err:
        main(["--data", "nowhere", "model.decoder_channels=64", "--variants", "smp", "heads"])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and "would ignore ['model.decoder_channels=64']" in msg
    assert check_smp_overrides(["heads"], ["model.decoder_channels=64"]) is None
    assert check_smp_overrides(["smp"], ["model.encoder=x", "model.encoder_weights=null", "model.output_stride=8",
                                         "train.epochs=2"]) is None
    assert check_smp_overrides(["smp"], ["model.flat=false"])


def test_smp_variant_initial_weights_follow_train_seed():
    """The smp model is built before the engine seeds: its init must come from train.seed, not variant order."""
    import torch

    from benchmarks.quality import build_smp
    from hiertree.config import load_config

    cfg = load_config(ROOT / "configs" / "pascal_part.yaml", ["model.encoder_weights=null"])

    def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    first, settings = build_smp(cfg)
    torch.rand(1000)  # what an earlier variant would have drawn from the global RNG
    again, _ = build_smp(cfg)
    assert same(first, again) and settings["init_seed"] == 0
    cfg["train"]["seed"] = 1
    assert not same(first, build_smp(cfg)[0])


@NEEDS_SAMPLE
def test_quality_benchmark_picks_up_finished_runs(tmp_path):
    """Re-invocations (e.g. after a command time limit) resume: wall time and invocations add up, and
    finished variants report their results without retraining."""
    import csv

    from benchmarks.quality import INVOCATIONS, main

    argv = ["--data", str(SAMPLE), "--smoke", "--variants", "heads", "--out", str(tmp_path),
            "--runs-dir", str(tmp_path / "runs"), "model.encoder_weights=null"]
    assert main(argv) == 0  # stops mid-epoch at --smoke's train.max_steps=2
    cut = json.loads((tmp_path / "quality-smoke-cpu.json").read_text())["runs"][0]
    assert main(argv + ["train.max_steps=null"]) == 0  # resumes and finishes the epoch
    first = json.loads((tmp_path / "quality-smoke-cpu.json").read_text())["runs"][0]
    assert main(argv + ["train.max_steps=null"]) == 0  # finished: only re-scored
    again = json.loads((tmp_path / "quality-smoke-cpu.json").read_text())["runs"][0]
    assert cut["steps"] == 2 and first["steps"] == again["steps"] == 8 and again["tree"] == first["tree"]
    with open(tmp_path / "runs" / "heads" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1  # the resumed epoch replaced its row: its seconds include the cut-off part
    assert again["seconds"] == first["seconds"] == round(float(rows[0]["seconds"]), 1) > cut["seconds"]
    runs = json.loads((tmp_path / "runs" / "heads" / INVOCATIONS).read_text())
    assert len(runs) == again["invocations"] == 3 and again["peak_memory_gib"] is None  # CPU: no GPU peak


def test_quality_peak_memory_is_the_max_over_invocations(tmp_path):
    from benchmarks.quality import max_peak_gib, record_invocation

    for peak in (3.5, None, 5.25, 4.0):
        runs = record_invocation(tmp_path, {"peak_memory_gib": peak})
    assert len(runs) == 4 and max_peak_gib(runs) == 5.25 and max_peak_gib([{"peak_memory_gib": None}]) is None


@NEEDS_SAMPLE
def test_quality_tta_evaluates_like_the_engine(tmp_path, monkeypatch):
    """--tta drops bad samples and passes channels_last, amp and the tiling settings as the engine does."""
    import shutil

    import torch

    import benchmarks.quality as quality
    from hiertree.config import load_config

    data = tmp_path / "data"
    shutil.copytree(SAMPLE, data)
    ids = (data / "val_id.txt").read_text().split()
    (data / "JPEGImages" / f"{ids[0]}.jpg").write_bytes(b"not a jpeg")
    cfg = load_config(ROOT / "configs" / "pascal_part.yaml", [
        f"data.root={data}", "data.skip_bad=true", "train.channels_last=true", "train.num_workers=0",
        "eval.max_side=300", "eval.window=256", "eval.overlap=0.5", "eval.max_batches=3"])
    seen = {}

    def fake_evaluate(model, loader, taxonomy, device, *, views, amp, max_batches, **kw):
        seen.update(n=len(loader.dataset), amp=amp, hflip=views.hflip, scales=views.scales, max_batches=max_batches,
                    max_side=views.max_side, window=views.window, overlap=views.overlap, **kw)
        return {"tree": {}, "raw": {}}

    monkeypatch.setattr(quality, "evaluate", fake_evaluate)
    _, skipped = quality.evaluate_like_engine(torch.nn.Conv2d(3, 1, 1), cfg, True, quality.TTA_SCALES)
    assert [s["id"] for s in skipped] == [ids[0]] and seen["n"] == len(ids) - 1
    assert seen["channels_last"] is True and seen["amp"] == "none" and seen["flat"] is False
    assert (seen["max_side"], seen["window"], seen["overlap"], seen["max_batches"]) == (300, 256, 0.5, 3)
    assert seen["hflip"] is True and tuple(seen["scales"]) == quality.TTA_SCALES


def test_per_depth_tables_equal_the_single_threshold_on_the_diagonal(pascal):
    """benchmarks/backoff_per_depth: with theta_leaf = theta_inner = t the two-threshold table is the one-threshold
    back-off's (right pixels and credited gain from hiertree.metrics.backoff_pairs), for every t on both grids."""
    from benchmarks.backoff_per_depth import INNER_GRID, PairAccumulator
    from hiertree.evaluation.backoff import GRID, CurveAccumulator
    from hiertree.inference import backoff_chain

    torch.manual_seed(0)
    logits = [torch.randn(2, n, 9, 11) * 3 for n in pascal.level_sizes]
    target = torch.randint(0, pascal.num_nodes, (2, 9, 11))
    chain, probs = backoff_chain(logits, pascal, flat=False)
    pairs, single = PairAccumulator(pascal), CurveAccumulator(pascal)
    pairs.update(chain, probs, target, ["a", "b"])
    single.update(chain, probs, target, ["a", "b"])
    tables, curves = pairs.tables(), single.curves()
    assert list(tables.pixels) == list(curves.pixels)
    for t in INNER_GRID:
        i, j = GRID.index(t), INNER_GRID.index(t)
        assert tables.right[:, i, j] == pytest.approx(curves.right[:, i]), t
        assert tables.gain[:, i, j] == pytest.approx(curves.gain[:, i]), t


def test_compare_commits_reads_seconds_and_milliseconds_as_lower_is_faster():
    from benchmarks.compare_commits import _summary

    rounds = [{"base": {"trainer_img_s": 10.0, "predict_s": 8.0, "hiertree_cpu_infer_ms": 100.0},
               "head": {"trainer_img_s": 12.0, "predict_s": 4.0, "hiertree_cpu_infer_ms": 200.0}}]
    summary = _summary(rounds)
    assert summary["trainer_img_s"]["head_speedup_x"] == 1.2  # images per second: higher is faster
    assert summary["predict_s"]["head_speedup_x"] == 2.0  # seconds: lower is faster
    assert summary["hiertree_cpu_infer_ms"]["head_speedup_x"] == 0.5
