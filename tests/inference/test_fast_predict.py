"""The fast CPU predict path: ONNX Runtime vs PyTorch on real images, the ONNX cache's rules, the import guard,
no padding between images of different sizes, --outputs and --backend and their bad inputs."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np
import pytest
import torch

import hiertree.version
import hiertree.inference.backends as backends
import hiertree.inference.onnx_graph as onnx_graph
from hiertree.inference.backends import BackendError, backend_choice, cached_onnx_runner, choose_backend, onnx_cache_meta
from hiertree.checkpoint import shipped_model
from hiertree.inference.predictor import Predictor, predict_images
from hiertree.models import load_model
from hiertree.cli.predict import main
from hiertree.inference.runners import TorchRunner
from hiertree.tree.taxonomy import Taxonomy
from tiny import save_tiny, tiny_model


REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO.parent / "shared" / "datasets" / "pascal-part-sample" / "JPEGImages"


@pytest.fixture(scope="module")
def taxonomy(pascal):
    return pascal


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    """The shared tiny checkpoint's folder (``ckpt-0000001``)."""
    return tiny_checkpoint / "ckpt-0000001"


def _copy(src: Path, dst: Path) -> None:
    """A checkpoint folder without the ONNX cache other tests left in it."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".hiertree-cache"))


class _Logged(logging.Handler):
    """The messages of hiertree.inference.backends, however the CLIs have routed the hiertree logger."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.messages)

    def __enter__(self) -> "_Logged":
        logger = logging.getLogger("hiertree.inference.backends")
        self.level_before = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logger = logging.getLogger("hiertree.inference.backends")
        logger.removeHandler(self)
        logger.setLevel(self.level_before)


def _exports(monkeypatch) -> list:
    calls = []
    real = onnx_graph.export_onnx  # backends imports it when it exports (a cache miss), so patch it at home
    monkeypatch.setattr(onnx_graph, "export_onnx", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    return calls


# ---------------------------------------------------------------------- same answers as PyTorch
@pytest.mark.skipif(not SAMPLE.is_dir(), reason="needs ../shared/datasets/pascal-part-sample (real photos)")
def test_onnx_matches_torch_on_real_photos_with_the_shipped_model(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(shipped_model("pascal_part_lite0_cpu"), folder)
    model, ck = load_model(folder, channels_last=True)
    onnx = cached_onnx_runner(folder, ck["taxonomy"], False, lambda: load_model(folder)[0])
    images = [cv2.imread(str(p))[..., ::-1].copy() for p in sorted(SAMPLE.glob("*.jpg"))[:3]]
    torch_runner = TorchRunner(model)
    agree, total, worst = 0, 0, 0.0
    for image in images:
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        worst = max(worst, max((a - b).abs().max().item() for a, b in zip(onnx(x), torch_runner(x))))
        a, b = (predict_images(r, [image])[0]["levels"] for r in (onnx, torch_runner))
        agree += sum(int((p == q).sum()) for p, q in zip(a, b))
        total += sum(p.size for p in a)
    assert worst < 1e-3, worst  # logits up to ~12; measured 1.1e-5: float32 reassociation in fused kernels only
    assert agree / total >= 0.999, agree / total


def test_onnx_and_torch_labels_match_on_the_tiny_model(tiny, taxonomy):
    model = load_model(tiny)[0]
    onnx = cached_onnx_runner(tiny, taxonomy, False, lambda: load_model(tiny)[0])
    image = np.random.default_rng(0).integers(0, 256, (45, 71, 3), dtype=np.uint8)
    a, b = (predict_images(r, [image])[0] for r in (onnx, TorchRunner(model)))
    for p, q in zip(a["levels"], b["levels"]):
        assert (p == q).mean() >= 0.999


def test_images_of_different_sizes_are_not_padded_together(tiny):
    model = load_model(tiny)[0]
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((40, 64, 3), (33, 50, 3), (40, 64, 3))]
    together = predict_images(model, images, batch_size=3)
    for image, got in zip(images, together):  # a batch mate of another size changes nothing
        alone = predict_images(model, [image])[0]
        for p, q in zip(got["levels"], alone["levels"]):
            np.testing.assert_array_equal(p, q)


# ---------------------------------------------------------------------- the cache
def test_cache_is_built_once_and_reused(tiny, taxonomy, tmp_path, monkeypatch):
    folder = tmp_path / "ck"
    _copy(tiny, folder)
    calls = _exports(monkeypatch)
    first = cached_onnx_runner(folder, taxonomy, False, lambda: load_model(folder)[0])
    assert first.path.parent == folder / ".hiertree-cache" and len(calls) == 1
    second = cached_onnx_runner(folder, taxonomy, False, lambda: pytest.fail("a cache hit builds no model"))
    assert second.path == first.path and len(calls) == 1
    assert second.metadata["weights_sha256"] == onnx_cache_meta(folder)["weights_sha256"]


def test_a_file_from_another_checkpoint_or_version_is_rebuilt_never_used(tiny, taxonomy, tmp_path, monkeypatch):
    mine, other = tmp_path / "mine", save_tiny(tmp_path / "other", tiny_model(taxonomy, seed=1), taxonomy)
    _copy(tiny, mine)
    theirs = cached_onnx_runner(other, taxonomy, False, lambda: load_model(other)[0])
    path = backends.onnx_cache_path(mine, onnx_cache_meta(mine))
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(theirs.path, path)  # another checkpoint's graph under this checkpoint's name
    calls = _exports(monkeypatch)
    with _Logged() as logged:
        runner = cached_onnx_runner(mine, taxonomy, False, lambda: load_model(mine)[0])
    assert len(calls) == 1 and "belongs to another checkpoint or version" in logged.text
    assert runner.metadata["hiertree_cache_key"] == onnx_cache_meta(mine)["hiertree_cache_key"]
    path.write_bytes(b"not onnx at all")  # a truncated or foreign file
    cached_onnx_runner(mine, taxonomy, False, lambda: load_model(mine)[0])
    assert len(calls) == 2
    monkeypatch.setattr(hiertree.version, "__version__", "9.9.9")  # another hiertree version: another key, another file
    upgraded = cached_onnx_runner(mine, taxonomy, False, lambda: load_model(mine)[0])
    assert len(calls) == 3 and upgraded.path != path


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_checkpoint_caches_elsewhere_and_says_where(tiny, taxonomy, tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    _copy(tiny, folder)
    folder.chmod(0o555)
    monkeypatch.setenv("HIERTREE_CACHE", str(tmp_path / "cache"))
    try:
        with _Logged() as logged:
            runner = cached_onnx_runner(folder, taxonomy, False, lambda: load_model(folder)[0])
    finally:
        folder.chmod(0o755)
    assert runner.path.parent.parent == tmp_path / "cache" / "onnx"  # a folder per checkpoint there
    assert "read-only" in logged.text and str(tmp_path / "cache" / "onnx") in logged.text


def test_unwritable_checkpoint_folder_is_detected(tiny, tmp_path, monkeypatch):
    """The same rule where the tests run as root: the folder probe fails, the user cache is used."""
    real = backends._writable
    monkeypatch.setattr(backends, "_writable", lambda folder: ".hiertree-cache" not in str(folder) and real(folder))
    monkeypatch.setenv("HIERTREE_CACHE", str(tmp_path / "cache"))
    with _Logged() as logged:
        path = backends.onnx_cache_path(tiny, onnx_cache_meta(tiny))
    assert path.parent.parent == tmp_path / "cache" / "onnx" and "read-only" in logged.text


# ---------------------------------------------------------------------- choosing a backend
def test_backend_choice_and_its_errors(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert choose_backend("auto", cpu) == "onnx" and choose_backend("auto", gpu) == "torch"
    assert choose_backend("torch", cpu) == "torch"
    with pytest.raises(BackendError, match="runs on the CPU"):
        choose_backend("onnx", gpu)
    with pytest.raises(BackendError, match="unknown backend 'tensorrt'; choose one of auto, torch, onnx"):
        choose_backend("tensorrt", cpu)
    for missing in (["onnxruntime", "onnx"], ["onnx"]):  # ONNX Runtime alone cannot export the graph
        monkeypatch.setattr(backends, "missing_onnx_packages", lambda: missing)
        assert choose_backend("auto", cpu) == "torch"
        chosen, why = backend_choice("auto", cpu)
        assert chosen == "torch" and why.startswith("PyTorch, not the faster ONNX Runtime")
        assert f"pip install {' '.join(missing)}" in why
        with pytest.raises(BackendError, match=rf"needs {' and '.join(missing)}, not installed.*pip install {' '.join(missing)}"):
            choose_backend("onnx", cpu)


def test_model_predict_uses_onnx_only_for_an_unchanged_checkpoint_model(tiny, tmp_path):
    folder = tmp_path / "ck"
    _copy(tiny, folder)
    model = load_model(folder)[0]
    image = np.random.default_rng(2).integers(0, 256, (37, 41, 3), dtype=np.uint8)
    assert Predictor(model, backend="auto").runner.name == "onnx"
    fast, slow = model.predict(image), model.predict(image, backend="torch")
    assert all((p == q).mean() >= 0.999 for p, q in zip(fast["levels"], slow["levels"]))
    with torch.no_grad():
        model.heads[0].bias.add_(1.0)  # trained further: the cached graph no longer describes it
    assert Predictor(model, backend="auto").runner.name == "torch"
    with pytest.raises(ValueError, match="unchanged since"):
        model.predict(image, backend="onnx")


# ---------------------------------------------------------------------- the command
def _inputs(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name, shape in (("a", (40, 52, 3)), ("b", (31, 44, 3))):
        cv2.imwrite(str(folder / f"{name}.png"), rng.integers(0, 256, shape, dtype=np.uint8))
    return folder


def test_outputs_choose_the_files_and_backends_agree(tiny, tmp_path):
    inputs = _inputs(tmp_path / "in")
    for backend in ("onnx", "torch"):
        out = tmp_path / backend
        assert main(["--checkpoint", str(tiny), str(inputs), "--out", str(out), "--device", "cpu",
                     "--backend", backend]) == 0
        assert {p.name for p in out.iterdir()} == {f"{s}_{k}" for s in "ab" for l in range(3)
                                                   for k in (f"labels_L{l}.png", f"L{l}_overlay.jpg")}
    for name in ("a_labels_L2.png", "b_labels_L1.png"):
        a, b = (cv2.imread(str(tmp_path / k / name), cv2.IMREAD_UNCHANGED) for k in ("onnx", "torch"))
        assert (a == b).mean() >= 0.999
    out = tmp_path / "probs"
    assert main(["--checkpoint", str(tiny), str(inputs / "a.png"), "--out", str(out), "--outputs", "color,probs"]) == 0
    assert {p.name for p in out.iterdir()} == {f"a_L{l}.png" for l in range(3)} | {"a_probs.npz"}


def test_bad_outputs_and_missing_onnxruntime_are_one_line(tiny, tmp_path, capsys, monkeypatch):
    inputs = _inputs(tmp_path / "in")
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tiny), str(inputs), "--out", str(tmp_path / "o"), "--outputs", "labels,mask"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown item(s) 'mask'; choose from labels, color, overlay, probs" in err
    monkeypatch.setattr(backends, "missing_onnx_packages", lambda: ["onnx"])  # ONNX Runtime there, no exporter
    assert main(["--checkpoint", str(tiny), str(inputs), "--out", str(tmp_path / "o"), "--backend", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hiertree-predict: error: the ONNX Runtime backend needs onnx, not installed") and \
        "pip install onnx" in err and "\n" not in err
    # auto with a piece missing: PyTorch, one line saying so, and every file written
    assert main(["--checkpoint", str(tiny), str(inputs), "--out", str(tmp_path / "auto")]) == 0
    printed = capsys.readouterr().out
    assert "torch backend: PyTorch, not the faster ONNX Runtime (backend auto)" in printed and "pip install onnx" in printed


HEAVY = ("torch", "safetensors.torch", "hiertree.training.engine", "torchvision", "albumentations", "matplotlib", "timm")


def test_the_predict_path_imports_nothing_heavy(tiny, tmp_path):
    """A fresh interpreter: importing the entry point, then predicting from a warm ONNX cache, loads none of
    the training machinery (engine, torchvision, albumentations, matplotlib, timm) and not PyTorch itself: on a
    2-core CPU importing torch is a second, half of a one-photo command's life (predict-profile results)."""
    inputs = _inputs(tmp_path / "in")
    folder = tmp_path / "ck"
    _copy(tiny, folder)
    assert main(["--checkpoint", str(folder), str(inputs), "--out", str(tmp_path / "warm")]) == 0  # fills the cache
    code = ("import sys, json\nimport hiertree.cli.predict as p\nafter_import = sorted(m for m in {h} if m in sys.modules)\n"
            "rc = p.main(['--checkpoint', {ck!r}, {inp!r}, '--out', {out!r}])\n"
            "print(json.dumps([after_import, sorted(m for m in {h} if m in sys.modules), rc]))"
            ).format(h=HEAVY, ck=str(folder), inp=str(inputs), out=str(tmp_path / "o"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    after_import, after_predict, rc = json.loads(run.stdout.strip().splitlines()[-1])
    assert rc == 0 and after_import == [] and after_predict == [], (after_import, after_predict, run.stderr[-2000:])


# ---------------------------------------------------------------------- int8
def test_int8_is_quantized_once_cached_and_checked(tiny, taxonomy, tmp_path, monkeypatch):
    import onnx

    folder = tmp_path / "ck"
    _copy(tiny, folder)
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (40, 52, 3), dtype=np.uint8) for _ in range(2)]
    calls = []
    real = backends._quantize
    monkeypatch.setattr(backends, "_quantize", lambda *a: calls.append(a[1]) or real(*a))
    build = lambda: load_model(folder)[0]  # noqa: E731
    int8 = cached_onnx_runner(folder, taxonomy, False, build, quantize="int8", calibration=lambda: images)
    fp32 = cached_onnx_runner(folder, taxonomy, False, build)
    assert int8.path != fp32.path and int8.path.name.startswith("predict-int8-") and len(calls) == 1
    assert int8.metadata["quantize"] == "int8" and int8.metadata["hiertree_cache_key"] != fp32.metadata["hiertree_cache_key"]
    ops = {node.op_type for node in onnx.load(str(int8.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    again = cached_onnx_runner(folder, taxonomy, False, build, quantize="int8", calibration=lambda: pytest.fail("cached"))
    assert again.path == int8.path and len(calls) == 1
    got = predict_images(int8, images[:1])[0]
    assert [lab.shape for lab in got["levels"]] == [(40, 52)] * 3
    with pytest.raises(BackendError, match="needs calibration images"):
        cached_onnx_runner(_fresh(tiny, tmp_path / "fresh"), taxonomy, False, build, quantize="int8",
                           calibration=lambda: [])


def _fresh(src: Path, dst: Path) -> Path:
    _copy(src, dst)
    return dst


def test_int8_needs_the_onnx_backend(tiny, tmp_path, capsys):
    inputs = _inputs(tmp_path / "in")
    assert main(["--checkpoint", str(tiny), str(inputs), "--out", str(tmp_path / "o"), "--backend", "torch",
                 "--quantize", "int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hiertree-predict: error: --quantize int8 runs in ONNX Runtime") and "\n" not in err


# ---------------------------------------------------------------------- what a newcomer hits (issue 24)
def test_editing_the_taxonomy_rebuilds_the_cached_graph(tiny, taxonomy, tmp_path):
    """The tree-consistent decoding is baked into the graph: moving a leaf under another parent with the weights
    unchanged must not reuse the old graph (it used to, and disagreed with PyTorch on the moved pixels)."""
    folder = tmp_path / "ck"
    _copy(tiny, folder)
    image = np.random.default_rng(5).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    before = load_model(folder)[0].predict(image)
    text = (folder / "taxonomy.yaml").read_text()
    moved = Taxonomy.from_dict(_moved_head(Taxonomy.load(folder / "taxonomy.yaml").to_dict()))
    (folder / "taxonomy.yaml").write_text(__import__("yaml").safe_dump(moved.to_dict(), sort_keys=False))
    assert (folder / "taxonomy.yaml").read_text() != text
    model = load_model(folder)[0]
    fast, slow = model.predict(image), model.predict(image, backend="torch")
    assert Predictor(model, backend="auto").runner.name == "onnx"
    assert all(np.array_equal(a, b) for a, b in zip(fast["levels"], slow["levels"]))
    assert not np.array_equal(fast["levels"][1], before["levels"][1])  # the edit moved pixels between L1 classes
    assert len(list((folder / ".hiertree-cache").glob("predict-*.onnx"))) == 2


def _moved_head(tree: dict) -> dict:
    """The same taxonomy with ``head`` under ``lower_body`` (the tree section edited by hand)."""
    body = tree["tree"]["body"]
    body["lower_body"]["head"] = body["upper_body"].pop("head")
    return tree


def test_old_graphs_are_pruned_to_the_newest(tiny, taxonomy, tmp_path):
    folder = tmp_path / "ck"
    _copy(tiny, folder)
    cache = folder / ".hiertree-cache"
    cache.mkdir()
    for k in range(6):  # graphs of earlier weights or versions
        old = cache / f"predict-old{k}.onnx"
        old.write_bytes(b"stale")
        os.utime(old, (1_000_000 + k, 1_000_000 + k))
    runner = cached_onnx_runner(folder, taxonomy, False, lambda: load_model(folder)[0])
    kept = sorted(p.name for p in cache.glob("predict-*.onnx"))
    assert len(kept) == backends.KEEP_GRAPHS and runner.path.name in kept
    assert {"predict-old5.onnx", "predict-old4.onnx", "predict-old3.onnx"} <= set(kept)  # the newest of the rest


def test_two_processes_on_a_cold_checkpoint_export_once(tiny, tmp_path):
    folder = tmp_path / "ck"
    _copy(tiny, folder)
    code = ("import logging, sys\nlogging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
            "from hiertree.models import load_model\nfrom hiertree.inference.backends import cached_onnx_runner\n"
            f"m = load_model({str(folder)!r})[0]\n"
            f"r = cached_onnx_runner({str(folder)!r}, m.taxonomy, False, lambda: load_model({str(folder)!r})[0])\n"
            "print('RUNNER', r.path)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {line.split()[1] for out in outs for line in out.splitlines() if line.startswith("RUNNER")}
    assert len(paths) == 1
    assert sum(out.count("exporting the ONNX graph once") for out in outs) == 1, outs
