"""Back-off decoding (climb to the first confident ancestor) and the hierarchical metrics, with known answers."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hiertree.inference import backoff_nodes, node_log_probs, tree_consistent_levels
from hiertree.metrics import HierarchicalMetrics
from hiertree.tree.taxonomy import Taxonomy
from tiny import tiny_model

TAX = Taxonomy.builtin("pascal_part")
# leaves 0 background, 1 low_hand, 2 torso, 3 low_leg, 4 head, 5 up_leg, 6 up_hand; 7 body, 8 upper_body, 9 lower_body
UNEVEN = Taxonomy.from_yaml_text("tree: {a: 0, g: {b: 1, h: {c: 2, d: 3}}}")  # leaves at depths 1, 2 and 3


def _leaf_pixel(probs):
    """A flat model's one-pixel output whose leaf distribution is ``probs``."""
    return [torch.tensor(probs).log().view(1, -1, 1, 1)]


# ---------------------------------------------------------------------- back-off decoding
def test_backoff_climbs_to_the_first_node_that_is_sure_enough():
    # torso .40, head .30, up_hand .10, low_hand .05: upper_body .85; body .95
    logits = _leaf_pixel([0.05, 0.05, 0.40, 0.05, 0.30, 0.05, 0.10])
    got = {t: int(backoff_nodes(logits, TAX, t, flat=True)) for t in (0.0, 0.3, 0.5, 0.9, 0.99)}
    assert got == {0.0: 2, 0.3: 2, 0.5: 8, 0.9: 7, 0.99: 7}  # a depth-1 node is the last stop
    lp = node_log_probs(logits, TAX, flat=True).exp().flatten()
    assert lp[8].item() == pytest.approx(0.85) and lp[7].item() == pytest.approx(0.95)


def test_backoff_on_leaves_at_several_depths():
    # uneven tree, leaf probabilities a .2, b .3, c .35, d .15: h .5, g .8
    logits = _leaf_pixel([0.2, 0.3, 0.35, 0.15])
    names = {t: UNEVEN.node_name(int(backoff_nodes(logits, UNEVEN, t, flat=True))) for t in (0.3, 0.4, 0.6, 0.9)}
    assert names == {0.3: "c", 0.4: "h", 0.6: "g", 0.9: "g"}
    assert UNEVEN.leaf_chains()[:, 0].tolist() == [0, 0, 0]  # a depth-1 leaf is its own last stop


def test_backoff_threshold_must_be_a_probability():
    for bad in (-0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match=r"back-off threshold must be a probability in \[0, 1\]"):
            backoff_nodes(_leaf_pixel([1 / 7] * 7), TAX, bad, flat=True)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_one_pass_curve_equals_one_update_per_threshold(seed):
    from hiertree.inference import backoff_chain, backoff_stop

    g = torch.Generator().manual_seed(seed)
    thresholds = [0.5, 0.0, 0.9, 0.3, 1.0, 0.31]  # unsorted on purpose
    for tax in (TAX, UNEVEN):
        logits = [torch.randn(2, c, 5, 3, generator=g) * 2 for c in tax.level_sizes]
        target = torch.randint(0, tax.num_leaves, (2, 5, 3), generator=g)
        target[0, 0, 0] = tax.ignore_index
        chain, probs = backoff_chain(logits, tax, False)
        fast = [HierarchicalMetrics(tax) for _ in thresholds]
        HierarchicalMetrics.update_backoff_curve(fast, thresholds, chain, probs, target)
        for t, m in zip(thresholds, fast):
            slow = HierarchicalMetrics(tax)
            slow.update_backoff(backoff_stop(chain, probs, t), target)
            assert torch.equal(m._backoff, slow._backoff), (tax.name, t)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_backoff_zero_is_the_tree_leaf_and_deeper_never_with_a_larger_threshold(seed):
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(2, c, 3, 4, generator=g) * 3 for c in TAX.level_sizes]
    leaf, _ = tree_consistent_levels(logits, TAX)
    assert torch.equal(backoff_nodes(logits, TAX, 0.0), leaf)
    depth = torch.tensor([TAX.node_depth(n) for n in TAX.node_names])
    last = None
    for t in (0.0, 0.2, 0.5, 0.7, 0.9, 1.0):
        d = depth[backoff_nodes(logits, TAX, t)]
        if last is not None:
            assert bool((d <= last).all())
        last = d


# ---------------------------------------------------------------------- hierarchical metrics
def test_mistake_severity_and_hierarchical_f1_by_hand():
    m = HierarchicalMetrics(TAX)
    target = torch.tensor([[2, 2, 2, 2, 255]])
    m.update(torch.tensor([[4, 3, 0, 2, 0]]), target)  # torso -> head, low_leg, background, torso; ignore
    h = m.compute()["hierarchy"]
    assert h["mistake_severity"] == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert h["severity_histogram"] == {"1": 1, "2": 1, "3": 1}
    # ancestor sets: truth {torso, upper_body, body}; shared 2, 1, 0, 3 of predicted sizes 3, 3, 1, 3
    assert h["hP"] == pytest.approx(6 / 10) and h["hR"] == pytest.approx(6 / 12)
    assert h["hF1"] == pytest.approx(2 * 0.6 * 0.5 / 1.1)
    assert h["pixels"] == 4 and h["accuracy"] == pytest.approx(0.25) and h["leaf_coverage"] == 1.0


def test_severity_on_an_uneven_tree():
    m = HierarchicalMetrics(UNEVEN)
    # c -> d (1 level: L2), c -> b (L1, L2), c -> a (all 3), b -> a (3), b -> c (L1, L2)
    m.update(torch.tensor([3, 1, 0, 0, 2]), torch.tensor([2, 2, 2, 1, 1]))
    h = m.compute()["hierarchy"]
    assert h["severity_histogram"] == {"1": 1, "2": 2, "3": 2}
    assert h["mistake_severity"] == pytest.approx((1 + 2 + 3 + 3 + 2) / 5)


def test_backoff_accuracy_and_specificity_by_hand():
    m = HierarchicalMetrics(TAX)
    target = torch.tensor([2, 2, 2, 4, 8])  # the last pixel is labelled upper_body only: not scored here
    m.update_backoff(torch.tensor([8, 7, 9, 4, 8]), target)  # upper_body, body, lower_body, head
    b = m.compute()["hierarchy"]["backoff"]
    assert b["pixels"] == 4
    assert b["accuracy"] == pytest.approx(3 / 4)
    # information gain relative to the root (Deng et al.), credited on right nodes only: upper_body has 4 of the 7
    # leaves under it, body 6, head is a leaf; lower_body is wrong for a torso and earns nothing
    gain = lambda under: (math.log(7) - math.log(under)) / math.log(7)  # noqa: E731
    assert b["specificity"] == pytest.approx((gain(4) + gain(6) + 0 + 1) / 4)
    assert b["leaf_coverage"] == pytest.approx(1 / 4)
    assert b["level_shares"] == pytest.approx({"L0": 1 / 4, "L1": 2 / 4, "L2": 1 / 4})  # body | upper, lower | head
    with pytest.raises(ValueError, match=r"node ids 0..9"):
        m.update_backoff(torch.tensor([10]), torch.tensor([2]))
    deeper = HierarchicalMetrics(TAX)  # background called torso: wrong, no credit; background called background: 1
    deeper.update_backoff(torch.tensor([2, 0]), torch.tensor([0, 0]))
    assert deeper.compute()["hierarchy"]["backoff"]["specificity"] == pytest.approx(0.5)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), cut=st.integers(1, 59))
def test_hierarchy_scores_ignore_pixel_order_and_batch_split(seed, cut):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 7, (60,), generator=g)
    pred = torch.randint(0, 7, (60,), generator=g)
    nodes = torch.randint(0, 10, (60,), generator=g)
    whole, parts = HierarchicalMetrics(TAX), HierarchicalMetrics(TAX)
    whole.update(pred, target)
    whole.update_backoff(nodes, target)
    perm = torch.randperm(60, generator=g)
    t, p, n = target[perm], pred[perm], nodes[perm]
    for sl in (slice(0, cut), slice(cut, 60)):
        parts.update(p[sl], t[sl])
        parts.update_backoff(n[sl], t[sl])
    a, b = whole.compute()["hierarchy"], parts.compute()["hierarchy"]
    for key in ("hP", "hR", "accuracy", "pixels"):
        assert a[key] == pytest.approx(b[key]) or (math.isnan(a[key]) and math.isnan(b[key]))
    shares_a, shares_b = a["backoff"].pop("level_shares"), b["backoff"].pop("level_shares")
    assert a["backoff"] == pytest.approx(b["backoff"]) and shares_a == pytest.approx(shares_b)


# ---------------------------------------------------------------------- the CLI paths, end to end on CPU
@pytest.fixture(scope="module")
def backoff_run(tmp_path_factory, tiny_checkpoint):
    """A copy of the shared tiny checkpoint (calibration writes into it) and 40 small val images of random parts."""
    import shutil

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("backoff")
    run = root / "run"
    shutil.copytree(tiny_checkpoint, run, symlinks=True)
    data = root / "data"
    (data / "JPEGImages").mkdir(parents=True)
    (data / "masks").mkdir()
    from hiertree.images import read_image
    from hiertree.models import load_model

    model = load_model(run)[0]
    rng = np.random.default_rng(0)
    for i in range(40):  # masks: the model's own leaves with a share of the pixels (10 % to 60 %) relabelled at random
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(data / "JPEGImages" / f"v{i}.jpg")
        leaf = model.predict(read_image(data / "JPEGImages" / f"v{i}.jpg"), backend="torch")["leaf"]
        noise = rng.random(leaf.shape) < rng.uniform(0.1, 0.6)
        mask = np.where(noise, rng.integers(0, 7, leaf.shape), leaf).astype(np.uint8)
        Image.fromarray(mask, mode="L").save(data / "masks" / f"v{i}.png")
    (data / "val_id.txt").write_text("".join(f"v{i}\n" for i in range(40)))
    (data / "few_id.txt").write_text("v0\nv1\nv2\n")
    return run, data


def test_calibrate_then_predict_with_auto(backoff_run, tmp_path, capsys):
    from hiertree.checkpoint import file_sha256
    from hiertree.cli.eval import main as eval_main
    from hiertree.cli.predict import main as predict_main
    from hiertree.evaluation.backoff import split_images

    run, data = backoff_run
    out = tmp_path / "eval.json"
    assert eval_main(["--checkpoint", str(run), "--data", str(data), "--split", "val", "--out", str(out),
                      "--no-report", "--calibrate-backoff", "0.3", "--device", "cpu", "--backoff-scope", "all"]) == 0
    result = json.loads(out.read_text())
    curve = result["backoff"]  # the whole split's pooled curve, for the report
    assert [p["threshold"] for p in curve][:3] == [0.0, 0.01, 0.02] and len(curve) == 101
    assert all(a["leaf_coverage"] >= b["leaf_coverage"] for a, b in zip(curve, curve[1:]))  # climbs more and more
    stored = json.loads((run / "best" / "backoff.json").read_text())
    assert stored["threshold"] == result["backoff_promise"]["threshold"] and (stored["target"], stored["delta"]) == (0.3, 0.1)
    assert stored["weights_sha256"] == file_sha256(run / "best" / "model.safetensors")
    assert stored["tta"] == {"hflip": False, "scales": [1.0]}
    # calibrated on the images of one half, scored on the other: every image on one side only
    halves = split_images([f"v{i}" for i in range(40)], seed=0)
    cal, held = stored["calibration"], stored["held_out"]
    assert (cal["images"], held["images"]) == (int(halves.sum()), int((~halves).sum()))
    assert stored["bound"] == "wsr" and cal["p_value"] <= 0.1  # certified at the chosen threshold
    assert held["promise_kept"] == (held["mean_image_accuracy"] >= 0.3) and 0 <= held["mean_image_specificity"] <= 1
    printed = capsys.readouterr().out
    assert "mistake severity" in printed and "back-off promise: node accuracy >= 0.3" in printed
    pred = tmp_path / "pred"
    assert predict_main(["--checkpoint", str(run), "--out", str(pred), str(data / "JPEGImages"), "--backoff", "auto",
                         "--device", "cpu"]) == 0
    import numpy as np
    from PIL import Image

    nodes = np.asarray(Image.open(pred / "v0_labels_nodes.png"))
    assert nodes.shape == (24, 32) and nodes.max() < TAX.num_nodes
    assert (pred / "legend_nodes.png").is_file() and (pred / "v0_nodes_overlay.jpg").is_file()
    # the promise is about these weights and single-scale predictions: other TTA or other weights are refused
    assert eval_main(["--checkpoint", str(run), "--data", str(data), "--split", "val", "--no-report", "--device", "cpu",
                      "--out", str(tmp_path / "f.json"), "--backoff", "auto", "--hflip"]) == 2
    assert "calibrated with hflip False, scales [1.0]; these predictions use hflip True" in capsys.readouterr().err


def test_backoff_bad_inputs_on_the_command_line(backoff_run, tmp_path, capsys):
    import shutil

    from hiertree.cli.eval import main as eval_main
    from hiertree.cli.predict import main as predict_main

    run, data = backoff_run
    common = ["--checkpoint", str(run), "--data", str(data), "--split", "val", "--no-report", "--device", "cpu",
              "--out", str(tmp_path / "e.json"), "--backoff-scope", "all"]
    assert eval_main(common + ["--calibrate-backoff", "1.5"]) == 2
    assert "P (the promised accuracy) must be in (0, 1), got 1.5" in capsys.readouterr().err
    assert eval_main(common + ["--calibrate-backoff", "0.5", "--delta", "0"]) == 2
    assert "delta (the risk the promise fails) must be in (0, 1), got 0.0" in capsys.readouterr().err
    few = [c if c != "val" else "few" for c in common]
    assert eval_main(few + ["--calibrate-backoff", "0.9", "--calibration-split", "few"]) == 2
    assert "the calibration split has 3 images; promising accuracy 0.9 at delta 0.1 needs at least 22" in \
        capsys.readouterr().err
    assert eval_main(common + ["--calibrate-backoff", "0.86"]) == 2  # 16 images would do, the model cannot
    assert "the largest accuracy these images let this model promise is" in capsys.readouterr().err
    assert eval_main(common + ["--backoff", "-1"]) == 2
    assert "--backoff must be a probability in [0, 1]" in capsys.readouterr().err
    bare = tmp_path / "bare"
    shutil.copytree(run / "best", bare / "ck")
    (bare / "ck" / "backoff.json").unlink(missing_ok=True)
    assert predict_main(["--checkpoint", str(bare / "ck"), "--out", str(tmp_path / "p"), str(data / "JPEGImages"),
                         "--backoff", "auto"]) == 2
    assert "has no calibrated back-off threshold; calibrate again: eval.py --checkpoint" in capsys.readouterr().err
    other = tmp_path / "other"  # a calibration from other weights
    shutil.copytree(run / "best", other / "ck")
    (other / "ck" / "backoff.json").write_text(json.dumps({**json.loads((run / "best" / "backoff.json").read_text()),
                                                            "weights_sha256": "0" * 64}))
    assert predict_main(["--checkpoint", str(other / "ck"), "--out", str(tmp_path / "p"), str(data / "JPEGImages"),
                         "--backoff", "auto"]) == 2
    assert "calibrated for other weights (sha256 000000000000..." in capsys.readouterr().err


def test_model_predict_backoff_zero_is_the_leaf(pascal):
    import numpy as np

    model = tiny_model(pascal, seed=1)
    out = model.predict(np.random.default_rng(0).integers(0, 255, (33, 45, 3), dtype=np.uint8), backoff=0.0)
    assert np.array_equal(out["nodes"], out["leaf"])
    with pytest.raises(ValueError, match="backoff='auto' needs a model loaded by load_model"):
        model.predict(np.zeros((8, 8, 3), np.uint8), backoff="auto")


def test_report_shows_severity_and_the_backoff_curve(backoff_run, tmp_path):
    pytest.importorskip("matplotlib")
    from hiertree.cli.eval import main as eval_main

    run, data = backoff_run
    assert eval_main(["--checkpoint", str(run), "--data", str(data), "--split", "val", "--out", str(tmp_path / "e.json"),
                      "--report", str(tmp_path / "rep"), "--report-samples", "0", "--calibrate-backoff", "0.3", "--backoff-scope", "all",
                      "--device", "cpu"]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "## How bad the mistakes are" in text and "mistake severity:" in text and "| 0.50 |" in text
    assert (tmp_path / "rep" / "backoff_curve.png").stat().st_size > 1000


def test_onnx_exports_the_node_map_and_the_leaf_probabilities(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import numpy as np

    from hiertree.inference.onnx_graph import export_onnx
    from hiertree.models import HierSegModel

    torch.manual_seed(2)
    model = HierSegModel(TAX, decoder_channels=16, skip_channels=8).eval()
    with torch.no_grad():
        for head in model.heads:
            head.weight.mul_(20.0)
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 255, (1, 3, 40, 52)).astype(np.float32))
    with torch.no_grad():
        logits = model(images)
    for output, want in (("nodes", backoff_nodes(logits, TAX, 0.6)),
                         ("leaf_probs", node_log_probs(logits, TAX)[:, : TAX.num_leaves].exp())):
        path = export_onnx(model, tmp_path / f"{output}.onnx", output=output, threshold=0.6)
        got = ort.InferenceSession(str(path)).run(None, {"images": images.numpy()})[0]
        if output == "nodes":
            assert (got == want.numpy()).mean() > 0.999
        else:
            assert np.abs(got - want.numpy()).max() < 1e-4
    with pytest.raises(ValueError, match="output 'nodes' needs a back-off threshold"):
        export_onnx(model, tmp_path / "x.onnx", output="nodes")


def test_a_one_level_tree_says_once_that_backoff_is_the_identity():
    import logging

    from hiertree.inference import resolve_backoff

    flat_tree = Taxonomy.from_yaml_text("name: one_level_once\ntree: {a: 0, b: 1, c: 2}")
    seen = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("hiertree.inference")
    logger.addHandler(handler)
    try:
        logits = [torch.tensor([0.1, 0.5, 0.4]).log().view(1, 3, 1, 1)]
        for _ in range(3):
            assert resolve_backoff(0.9, None, flat_tree) == 0.9
            assert int(backoff_nodes(logits, flat_tree, 0.9)) == 1  # no ancestor to climb to: the leaf
    finally:
        logger.removeHandler(handler)
    assert seen == ["taxonomy 'one_level_once' has one level: back-off predictions are the leaves"]


# ---------------------------------------------------------------------- the promise, by hand and by simulation
def test_hoeffding_bentkus_pvalue_by_hand():
    from hiertree.evaluation.backoff import hb_pvalue, min_images

    assert hb_pvalue(0.0, 0.1, 22) == pytest.approx(0.9 ** 22)  # every image perfect: Hoeffding's bound
    assert hb_pvalue(0.2, 0.1, 100) == 1.0  # the sample risk above the promise: no evidence at all
    # Bentkus: e * P(Binomial(50, 0.1) <= 1) = e * (0.9^50 + 50 * 0.1 * 0.9^49)
    assert hb_pvalue(0.02, 0.1, 50) == pytest.approx(min(math.exp(-50 * (0.02 * math.log(0.2) + 0.98 * math.log(0.98 / 0.9))),
                                                         math.e * (0.9 ** 50 + 5 * 0.9 ** 49)))
    assert min_images(0.9, 0.1) == 22 and 0.9 ** 22 <= 0.1 < 0.9 ** 21


def _population(n: int, seed: int):
    """Images whose node accuracy climbs with the threshold from a base of their own (a known population)."""
    import numpy as np

    from hiertree.evaluation.backoff import GRID, ImageCurves

    rng = np.random.default_rng(seed)
    grid = np.array(GRID)
    base = rng.beta(8, 2, n)  # leaf-level accuracy per image, mean 0.8, some images much worse
    acc = base[:, None] + (1 - base[:, None]) * 0.9 * grid[None, :] ** 2
    pixels = np.full(n, 1000)
    right = np.round(acc * pixels[:, None])
    zeros = np.zeros((n, len(grid)))
    return ImageCurves([f"i{k}" for k in range(n)], grid, pixels, right, zeros, zeros, np.zeros((n, len(grid), 3)))


def test_fixed_sequence_stops_at_the_first_uncertified_threshold():
    import numpy as np

    from hiertree.evaluation.backoff import calibrate, hb_pvalue

    curves = _population(300, seed=1)
    chosen = calibrate(curves, target=0.9, delta=0.1, bound="hb")
    risks = 1 - curves.accuracy().mean(0)
    g = int(np.argmin(np.abs(curves.thresholds - chosen["threshold"])))
    assert all(hb_pvalue(risks[k], 0.1, 300) <= 0.1 for k in range(g, len(risks)))  # certified from 1 down to it
    assert g == 0 or hb_pvalue(risks[g - 1], 0.1, 300) > 0.1  # and the next one down is not
    assert 0 < chosen["threshold"] < 1  # an informative promise: neither every leaf nor every depth-1 node


def test_the_promise_holds_on_new_images_in_at_least_1_minus_delta_of_draws():
    """A population of 5000 images with a known mean accuracy per threshold; 300 calibrations on 150 images drawn
    from it: the population's accuracy at the chosen threshold must reach the promise in >= 1 - delta - 0.02."""
    import numpy as np

    from hiertree.evaluation.backoff import BackoffError, calibrate

    population = _population(5000, seed=2)
    truth = population.accuracy().mean(0)
    rng = np.random.default_rng(3)
    kept, made = 0, 0
    for _ in range(300):
        draw = population.subset(rng.choice(5000, 150, replace=False))
        try:
            theta = calibrate(draw, target=0.9, delta=0.1)["threshold"]
        except BackoffError:
            continue
        made += 1
        kept += truth[int(np.argmin(np.abs(population.thresholds - theta)))] >= 0.9
    assert made >= 250 and kept / made >= 0.88


def test_coverage_over_random_halves_of_a_split():
    from hiertree.evaluation.backoff import coverage

    result = coverage(_population(400, seed=4), target=0.9, delta=0.1, trials=100, seed=0)
    assert result["promises_made"] >= 90 and result["coverage"] >= 0.88
    assert result["calibration_images"] == 200 and 0 < result["threshold_mean"] < 1


def test_the_betting_pvalue_is_valid_under_the_null_and_tighter_when_risks_agree():
    """Under the null (mean risk exactly alpha) p <= delta in at most about delta of the draws; with risks that all
    sit just below alpha the betting p-value rejects where Hoeffding-Bentkus, which sees only the mean, cannot."""
    import numpy as np

    from hiertree.evaluation.backoff import hb_pvalue, wsr_pvalue

    rng = np.random.default_rng(5)
    rejected = sum(wsr_pvalue(rng.binomial(1, 0.1, 100).astype(float), 0.1, 0.1, seed=k) <= 0.1 for k in range(500))
    assert rejected / 500 <= 0.12
    close = np.full(100, 0.07) + rng.normal(0, 0.005, 100)  # every image's risk near 0.07, the promise at 0.1
    assert wsr_pvalue(close, 0.1, 0.1) <= 0.1 < hb_pvalue(float(close.mean()), 0.1, 100)
    assert wsr_pvalue(np.full(50, 0.5), 0.1, 0.1) == 1.0  # risks above the promise: no evidence


# ---------------------------------------------------------------------- the promise over the person's pixels
def _scene():
    """A 1x4 image, flat model. Truth: background, torso, torso, head. Predictions: background (sure) on the
    background pixel and on the first torso pixel (a person pixel the model misses), the second torso pixel
    torso at 0.4 / head 0.3 (upper_body 0.8), the head pixel head 0.9."""
    rows = [[0.94, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01], [0.94, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01],
            [0.1, 0.05, 0.4, 0.05, 0.3, 0.0, 0.1], [0.04, 0.01, 0.01, 0.01, 0.9, 0.01, 0.02]]
    probs = torch.tensor(rows).clamp_min(1e-6)
    logits = [probs.log().t().reshape(1, 7, 1, 4)]
    return logits, torch.tensor([[[0, 2, 2, 4]]])


@pytest.mark.parametrize("scope, at_zero, at_half, pixels", [
    ("all", 3 / 4, 3 / 4, 4),  # background right, torso missed, torso right, head right; at 0.5 torso -> upper_body
    ("foreground", 2 / 3, 2 / 3, 3),  # the three person pixels: one missed (called background) at every threshold
    ("predicted", 2 / 2, 2 / 2, 2),  # the two pixels called a person: both right
])
def test_backoff_scope_counts_the_right_pixels(scope, at_zero, at_half, pixels):
    from hiertree.evaluation.backoff import CurveAccumulator
    from hiertree.inference import backoff_chain

    logits, target = _scene()
    chain, probs = backoff_chain(logits, TAX, True)
    acc = CurveAccumulator(TAX, thresholds=[0.0, 0.5, 0.95], scope=scope)
    acc.update(chain, probs, target, ["img"])
    curves = acc.curves()
    assert curves.scope == scope and int(curves.pixels[0]) == pixels
    assert curves.accuracy()[0].tolist() == pytest.approx([at_zero, at_half, at_half])
    # the torso pixel at 0.4 climbs to upper_body (0.8) at 0.5 and to body at 0.95: it leaves the leaves
    leaves = curves.at_leaf[0].tolist()
    assert leaves[0] - leaves[1] == 1 and leaves[1] - leaves[2] == 1


def test_foreground_nodes_are_the_body_and_everything_under_it():
    assert sorted(TAX.node_name(i) for i in TAX.foreground_nodes()) == sorted(
        ["low_hand", "torso", "low_leg", "head", "up_leg", "up_hand", "body", "upper_body", "lower_body"])
    flat = Taxonomy.from_yaml_text("tree: {background: 0, cat: 1}\nexclude_from_miou: [background, cat]")
    from hiertree.evaluation.backoff import BackoffError, CurveAccumulator

    with pytest.raises(BackoffError, match="no foreground node .* use the back-off scope 'all'"):
        CurveAccumulator(flat, scope="foreground")
    assert CurveAccumulator(flat, scope="all").scope == "all"


def test_images_without_a_person_say_nothing_about_the_person_promise():
    from hiertree.evaluation.backoff import CurveAccumulator
    from hiertree.inference import backoff_chain

    logits, _ = _scene()
    chain, probs = backoff_chain(logits, TAX, True)
    acc = CurveAccumulator(TAX, thresholds=[0.0], scope="foreground")
    acc.update(chain, probs, torch.zeros(1, 1, 4, dtype=torch.long), ["empty"])
    acc.update(chain, probs, _scene()[1], ["person"])
    assert acc.curves().ids == ["person"]


def test_ladder_lists_stricter_promises_with_higher_thresholds_and_less_detail():
    import numpy as np

    from hiertree.evaluation.backoff import ImageCurves, ladder

    rng = np.random.default_rng(0)
    grid = np.round(np.linspace(0, 1, 101), 2)
    n = 400
    base = rng.uniform(0.55, 0.75, n)  # accuracy at threshold 0; climbs linearly to 1 at threshold 1
    right = (base[:, None] + (1 - base[:, None]) * grid[None, :]) * 100
    leaf = 100 * (1 - grid)[None, :].repeat(n, 0)
    zeros = np.zeros((n, len(grid)))
    curves = ImageCurves([f"i{k}" for k in range(n)], grid, np.full(n, 100.0), right, zeros, leaf,
                         np.zeros((n, len(grid), 3)), "foreground")
    half = np.arange(n) < n // 2
    rows = ladder(curves.subset(half), curves.subset(~half), targets=(0.6, 0.7, 0.8, 0.9), delta=0.1)
    thresholds = [r["threshold"] for r in rows]
    assert thresholds == sorted(thresholds) and thresholds[0] < thresholds[-1]
    shares = [r["held_out_leaf_share"] for r in rows]
    assert shares == sorted(shares, reverse=True)
    assert all(r["held_out_mean_image_accuracy"] >= r["target"] for r in rows)


def test_the_ladder_is_printed_and_drawn(backoff_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from hiertree.cli.eval import main as eval_main
    from hiertree.evaluation.report import backoff_ladder_figure

    run, data = backoff_run
    assert eval_main(["--checkpoint", str(run), "--data", str(data), "--split", "val", "--out", str(tmp_path / "e.json"),
                      "--no-report", "--calibrate-backoff", "0.3", "--backoff-scope", "all", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "promise  threshold  held-out accuracy  still at a leaf" in printed
    assert "0.95     -          (these images cannot support it)" in printed  # beyond this tiny model's reach
    stored = json.loads((run / "best" / "backoff.json").read_text())
    assert [r["target"] for r in stored["ladder"]] == [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert stored["scope"] == "all" and "its leaf-labelled pixels (background included) whose" in stored["promise"]
    rows = [{"target": 0.7, "threshold": 0.2, "held_out_mean_image_accuracy": 0.72, "held_out_leaf_share": 0.8},
            {"target": 0.8, "threshold": 0.6, "held_out_mean_image_accuracy": 0.81, "held_out_leaf_share": 0.5},
            {"target": 0.9, "threshold": None}]
    backoff_ladder_figure(rows, tmp_path / "ladder.png")
    assert (tmp_path / "ladder.png").stat().st_size > 1000
