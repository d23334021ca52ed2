"""hiertree.training.trackers with the real wandb (offline) and mlflow (file store) packages, all inside tmp_path.

W&B runs are read back with wandb's own reader of its ``.wandb`` transaction log (``wandb leet inspect``);
MLflow runs through ``MlflowClient``. Nothing goes to the user's home or the network: the wandb/mlflow
folders and HOME point into tmp_path, and the test process refuses any non-loopback socket connection.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hiertree.training.trackers import MultiTracker, Tracker, build_trackers, flatten_config

CONFIG = {
    "train": {"lr": 0.01, "epochs": 3, "amp": False, "trackers": ["wandb", "mlflow"], "resume": None},
    "model": {"backbone": "efficientnet_lite0", "heads": {"dims": [64, 32]}},
    "data": {"root": Path("/data/pascal"), "extra": {}},
}
FLAT = {
    "train.lr": 0.01, "train.epochs": 3, "train.amp": False, "train.trackers": ["wandb", "mlflow"], "train.resume": None,
    "model.backbone": "efficientnet_lite0", "model.heads.dims": [64, 32], "data.root": "/data/pascal", "data.extra": {},
}
STEPS = [(0, {"loss/total": 2.0, "lr": 0.01}), (5, {"loss/total": torch.tensor(1.5), "lr": 0.005, "mIoU/L0": None}),
         (10, {"loss/total": 1.0, "mIoU/L0": 0.25})]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """wandb's and mlflow's folders and HOME inside tmp_path, a bogus global MLflow URI, no outside sockets."""
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR", "HOME"):
        monkeypatch.setenv(var, str(tmp_path / "env" / var.lower()))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # were anything sent, it would go nowhere
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # must be ignored unless asked for
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_ERROR_REPORTING", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(var, raising=False)  # the trackers set some of these: restored after the test
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address):  # wandb talks to its own service over loopback or a unix socket
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"network connection attempted to {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return tmp_path / "run"


def _children() -> list[str]:
    """Names of this process's live child processes (Linux /proc)."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if int(rest[1]) == os.getpid() and rest[0] != "Z":
            names.append(comm)
    return names


def _inspect(run_file: Path, *flags: str) -> str:
    """wandb's own reader of a run's ``.wandb`` log, as JSON text."""
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(run_file)],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_flatten_config():
    assert flatten_config(CONFIG) == {**FLAT, "data.root": Path("/data/pascal")}
    assert flatten_config({}) == {}


def test_importing_loads_neither_package():
    """A fresh copy of the module imports while wandb and mlflow are unimportable."""
    spec = importlib.util.spec_from_file_location("_trackers_copy", Path(__file__).parents[2] / "hiertree" / "training" / "trackers.py")
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("wandb", "mlflow"):
            mp.setitem(sys.modules, name, None)
        spec.loader.exec_module(module)
    assert set(module.TRACKERS) == {"wandb", "mlflow"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and wandb's Linux service")
@pytest.mark.parametrize("status,state,code", [("finished", "finished", 0), ("failed", "failed", 1)])
def test_wandb_offline_roundtrip(isolated, status, state, code):
    pytest.importorskip("wandb")
    (tracker,) = build_trackers(["wandb"], isolated, "run-1", {"wandb": {"project": "hiertree-test"}})
    tracker.log_config(CONFIG)
    for step, scalars in STEPS:
        tracker.log_scalars(step, scalars)
    tracker.close(status)
    tracker.close(status)  # twice is harmless
    assert not [c for c in _children() if "wandb" in c], "wandb's service outlived close()"

    (run_file,) = (isolated / "wandb").glob("offline-run-*/run-*.wandb")
    summary = json.loads(_inspect(run_file, "--summary"))
    assert (summary["name"], summary["project"], summary["state"], summary["exit_code"]) == ("run-1", "hiertree-test", state, code)
    assert {k: v for k, v in summary["config"].items() if not k.startswith("_")} == {**FLAT, "data.extra": "{}"}
    records = [json.loads(line) for line in _inspect(run_file).splitlines() if line.strip()]
    history = {r["history"]["step"].get("num", 0): r["history"]["item"] for r in records if r["type"] == "history"}
    assert sorted(history) == [0, 5, 10]
    assert [history[s]["loss/total"] for s in (0, 5, 10)] == [2.0, 1.5, 1.0]
    assert "mIoU/L0" not in history[5] and history[10]["mIoU/L0"] == 0.25


@pytest.mark.parametrize("status", ["finished", "failed", "killed"])
def test_mlflow_file_store_roundtrip(isolated, status):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    many = {"sweep": {f"p{i:03d}": i for i in range(150)}}  # more than one 100-param batch
    (tracker,) = build_trackers(["mlflow"], isolated, "run-1", {"mlflow": {"experiment": "hiertree-test"}})
    assert tracker.tracking_uri == (isolated / "mlruns").resolve().as_uri()  # pinned, not MLFLOW_TRACKING_URI
    tracker.log_config({**CONFIG, **many, "odd": {"key[0]": "x"}})
    for step, scalars in STEPS:
        tracker.log_scalars(step, scalars)
    tracker.close(status)
    tracker.close(status)

    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}[status]
    assert run.info.run_name == "run-1"
    assert client.get_experiment(run.info.experiment_id).name == "hiertree-test"
    expected = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in FLAT.items()}
    expected.update({f"sweep.p{i:03d}": str(i) for i in range(150)}, **{"odd.key_0_": "x"})
    assert run.data.params == expected
    loss = client.get_metric_history(tracker.run_id, "loss/total")
    assert sorted((m.step, m.value) for m in loss) == [(0, 2.0), (5, 1.5), (10, 1.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "mIoU/L0")] == [(10, 0.25)]


def test_mlflow_env_uri_only_when_asked(isolated, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = (isolated.parent / "global-mlruns").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    first, second = (build_trackers(["mlflow"], isolated, "r", {"mlflow": {"tracking_uri": uri}})[0] for uri in ("env", None))
    assert (first.tracking_uri, second.tracking_uri) == (store, (isolated / "mlruns").resolve().as_uri())
    for t in (first, second):
        t.log_scalars(1, {"x": math.pi})
        t.close()
    assert MlflowClient(tracking_uri=store).get_run(first.run_id).info.status == "FINISHED"


def test_unknown_tracker_name():
    with pytest.raises(ValueError) as e:
        build_trackers(["tensorbord", "wandbb"], Path("unused"), "r")
    assert str(e.value) == "unknown tracker 'tensorbord': valid are mlflow, wandb"
    with pytest.raises(ValueError, match=r"^unknown tracker 'wandbb': valid are mlflow, wandb \(did you mean 'wandb'\?\)$"):
        build_trackers(["WandbB"], Path("unused"), "r")


def test_unknown_option(tmp_path):
    with pytest.raises(ValueError, match=r"^unknown mlflow option 'experiment_name': .*did you mean 'experiment'\?\)$"):
        build_trackers(["mlflow"], tmp_path, "r", {"mlflow": {"experiment_name": "x"}})
    with pytest.raises(ValueError, match="did you mean 'mlflow'"):
        build_trackers([], tmp_path, "r", {"mlflw": {}})
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("missing", ["wandb", "mlflow"])
def test_missing_package(tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError
    with pytest.raises(ImportError) as e:
        build_trackers(["mlflow", "wandb"], tmp_path, "r")
    assert str(e.value) == f'the {missing} tracker needs the {missing} package: pip install "hiertree[{missing}]"'
    assert not any(tmp_path.iterdir()), "no tracker may start before every package is checked"


def test_no_trackers_and_bad_status(tmp_path):
    assert build_trackers([], tmp_path, "r") == []
    with pytest.raises(ValueError, match="status must be one of finished, failed, killed"):
        MultiTracker([]).close("crashed")


class _Recorder(Tracker):
    """A stand-in tracker (not a wandb/mlflow mock) to check the fan-out."""

    def __init__(self, fail_close: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail_close = fail_close

    def log_config(self, cfg):
        self.calls.append(("config", dict(cfg)))

    def log_scalars(self, step, scalars):
        self.calls.append(("scalars", step, dict(scalars)))

    def close(self, status="finished"):
        self.calls.append(("close", status))
        if self.fail_close:
            raise RuntimeError("boom")


def test_multitracker_fans_out_and_closes_all():
    a, b = _Recorder(fail_close=True), _Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        with MultiTracker([a, b]) as multi:
            multi.log_config({"a": 1})
            multi.log_scalars(3, {"x": 1.0})
            raise KeyboardInterrupt
    assert a.calls == b.calls == [("config", {"a": 1}), ("scalars", 3, {"x": 1.0}), ("close", "killed")]


def test_the_trainer_logs_to_mlflow_with_the_run_config(tmp_path):
    """train.trackers=[mlflow]: the resolved config as params, losses per step and mIoU per epoch, FINISHED."""
    pytest.importorskip("mlflow", reason="mlflow is the trackers' optional extra")
    from mlflow.tracking import MlflowClient

    from hiertree.config import load_config
    from hiertree.training.engine import train

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "run"
    cfg = load_config(root / "configs/demo.yaml", [
        "data.crop=64", "data.synthetic.size=64", "data.synthetic.num_train=16", "data.synthetic.num_val=2",
        "model.decoder_channels=8", "model.skip_channels=8", "model.encoder_weights=null", "train.epochs=2",
        "train.batch_size=8", "train.num_workers=0", "train.progress=false", "train.threads=1", "train.log_every=1",
        "eval.batch_size=2", "train.trackers=[mlflow]", f"train.out_dir={out}"])
    train(cfg)
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (exp,) = [e for e in client.search_experiments() if e.name == "hiertree"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "2"
    assert {m.step for m in client.get_metric_history(run.info.run_id, "loss/total")} == {1, 2, 3, 4}
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "mIoU/L2")) == [2, 4]
