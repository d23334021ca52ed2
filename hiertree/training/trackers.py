"""Optional experiment trackers (Weights & Biases, MLflow) beside ``metrics.csv`` and TensorBoard.

The trainer builds them once the run folder exists (rank 0 only), logs the resolved config once, scalars at
each step/epoch, and closes them with the run's outcome::

    trackers = MultiTracker(build_trackers(["wandb", "mlflow"], run_dir, run_name, options))
    trackers.log_config(cfg)                      # nested dict, logged as dotted params: train.lr, ...
    trackers.log_scalars(step, {"loss/total": 0.7})
    trackers.close("finished")                    # or "failed" (error) / "killed" (signal, Ctrl-C)

Neither package is imported until a tracker is built, so ``import hiertree.training.trackers`` stays cheap and works
without them. W&B defaults to offline mode (files under ``run_dir/wandb``, no network); MLflow defaults to a
file store under ``run_dir/mlruns`` and never reads ``MLFLOW_TRACKING_URI`` unless asked (``tracking_uri="env"``).
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

from hiertree.config.options import suggest

__all__ = ["Tracker", "WandbTracker", "MlflowTracker", "MultiTracker", "build_trackers", "flatten_config", "TRACKERS", "STATUSES"]

logger = logging.getLogger(__name__)

STATUSES = ("finished", "failed", "killed")
"""How a run ended, as :meth:`Tracker.close` takes it."""


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to one level with dotted keys (``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``).

    Trackers show params as flat key/value tables (MLflow only takes flat ones); an empty mapping stays a leaf.
    """
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _plain(value: Any) -> Any:
    """A config value as JSON-friendly data (paths and other objects as strings, tuples as lists)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def _number(value: Any) -> float | None:
    """A scalar as a float (0-d tensors and numpy scalars via ``.item()``); None is skipped by the callers."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"trackers: scalar values must be numbers or 0-d tensors, got {type(value).__name__} {value!r}") from None


class Tracker:
    """One experiment tracker: params once, scalars per step, then closed with how the run ended.

    A context manager too: leaving the block by an exception closes it "failed", by KeyboardInterrupt "killed".
    """

    name = "tracker"

    def log_config(self, cfg: Mapping[str, Any]) -> None:
        """Record the run's resolved (nested) config as flat dotted params; call it once per run."""
        raise NotImplementedError

    def log_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Record numbers at a global ``step`` (None values are skipped); steps must not go backwards."""
        raise NotImplementedError

    def close(self, status: str = "finished") -> None:
        """End the run as "finished", "failed" or "killed"; closing twice does nothing."""
        raise NotImplementedError

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close("finished")
        else:
            self.close("killed" if issubclass(exc_type, KeyboardInterrupt) else "failed")


def _check_status(status: str) -> str:
    if status not in STATUSES:
        raise ValueError(f"trackers: status must be one of {', '.join(STATUSES)}; got {status!r}")
    return status


class WandbTracker(Tracker):
    """Weights & Biases run; ``mode="offline"`` (default) writes ``run_dir/wandb/offline-run-*`` and opens no network.

    Offline runs can be uploaded later with ``wandb sync run_dir/wandb/offline-run-*``. The defaults keep wandb
    quiet and local: no console capture (tqdm stays as it is), no git/code/requirements/system-metrics collection
    and, offline, no error reporting to W&B. ``settings`` overrides any ``wandb.Settings`` field.
    """

    name = "wandb"
    EXIT_CODES = {"finished": 0, "failed": 1, "killed": 130}
    """W&B knows a run's end only by exit code (non-zero shows as failed); "killed" uses 130, a shell's Ctrl-C code."""

    def __init__(self, run_dir: str | Path, run_name: str | None = None, project: str = "hiertree",
                 mode: Literal["offline", "online", "disabled"] = "offline", entity: str | None = None,
                 tags: Sequence[str] = (), settings: Mapping[str, Any] | None = None) -> None:
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"WandbTracker: mode must be 'offline', 'online' or 'disabled', got {mode!r}")
        wandb = _require("wandb", "wandb")
        self.run_dir = Path(run_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if mode != "online":
            os.environ["WANDB_ERROR_REPORTING"] = "false"  # read by wandb and its service process: no telemetry upload
        options = {"silent": True, "console": "off", "disable_git": True, "disable_code": True, "save_code": False,
                   "x_disable_stats": True, "x_disable_machine_info": True, "x_save_requirements": False}
        options.update(settings or {})
        self._wandb = wandb
        self.run = wandb.init(dir=str(self.run_dir), project=project, name=run_name, entity=entity, tags=list(tags),
                              mode=mode, reinit="create_new", settings=wandb.Settings(**options))
        self._closed = False
        logger.info("wandb run %s (%s) in %s", self.run.id, mode, self.run_dir / "wandb")

    def log_config(self, cfg: Mapping[str, Any]) -> None:
        """Dotted keys into ``run.config`` (allow_val_change, so a resumed run may log changed values).

        An empty section goes in as the string ``"{}"``: wandb would drop an empty dict.
        """
        flat = {k: "{}" if isinstance(v, Mapping) else _plain(v) for k, v in flatten_config(cfg).items()}
        self.run.config.update(flat, allow_val_change=True)

    def log_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """``run.log(..., step=step)``: calls at the same step merge into one history row."""
        values = {k: v for k, v in ((k, _number(v)) for k, v in scalars.items()) if v is not None}
        if values:
            self.run.log(values, step=int(step))

    def close(self, status: str = "finished") -> None:
        """Finish the run with the status's exit code, then stop wandb's service unless another run still uses it."""
        code = self.EXIT_CODES[_check_status(status)]
        if self._closed:
            return
        self._closed = True
        self.run.finish(exit_code=code)
        if self._wandb.run is None:  # no other active run in this process: no wandb-core process outlives ours
            self._wandb.teardown()


def _mlflow_key(key: str) -> str:
    """A metric/param name MLflow accepts everywhere: other characters become ``_``, at most 250 characters."""
    return re.sub(r"[^/\w.\- ]", "_", str(key))[:250]


def _param_value(value: Any) -> str:
    """A param as MLflow stores it: strings as they are, everything else as JSON, cut to MLflow's 6000 characters."""
    value = _plain(value)
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:6000]


class MlflowTracker(Tracker):
    """MLflow run through an explicit ``MlflowClient`` (no global active run, no ``mlflow.start_run``).

    ``tracking_uri``: None (default) -> ``file:///<abs run_dir>/mlruns``; a plain path -> that folder as a file
    URI; ``"env"`` -> whatever MLflow resolves from ``MLFLOW_TRACKING_URI``; anything else (``http://...``,
    ``sqlite:///...``, ``databricks``) as given. File stores are opted in (``MLFLOW_ALLOW_FILE_STORE=true``
    when unset), since MLflow 3 refuses them otherwise.
    """

    name = "mlflow"
    RUN_STATUS = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}

    def __init__(self, run_dir: str | Path, run_name: str | None = None, experiment: str = "hiertree",
                 tracking_uri: str | None = None, tags: Mapping[str, str] | None = None) -> None:
        _require("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        self.run_dir = Path(run_dir).resolve()
        self.tracking_uri = self._resolve_uri(tracking_uri)
        if self.tracking_uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        run = self.client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
        self.run_id: str = run.info.run_id
        self._closed = False
        logger.info("mlflow run %s in experiment %r at %s", self.run_id, experiment, self.tracking_uri)

    def _resolve_uri(self, uri: str | None) -> str:
        """The tracking URI to pin: see the class docstring."""
        if uri is None or uri == "":
            return (self.run_dir / "mlruns").as_uri()
        if uri == "env":
            import mlflow

            return mlflow.get_tracking_uri()
        if "://" in uri or uri.startswith("file:") or uri.split(":")[0] in ("databricks", "databricks-uc", "uc"):
            return uri
        return Path(uri).expanduser().resolve().as_uri()

    def log_config(self, cfg: Mapping[str, Any]) -> None:
        """Dotted params, 100 a batch (MLflow's limit); MLflow refuses to change a param once logged."""
        from mlflow.entities import Param

        params = [Param(_mlflow_key(k), _param_value(v)) for k, v in flatten_config(cfg).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100], synchronous=True)

    def log_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """One ``log_batch`` of metrics at ``step``, stamped with the wall-clock time."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), v, now, int(step)) for k, v in ((k, _number(v)) for k, v in scalars.items())
                   if v is not None]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000], synchronous=True)

    def close(self, status: str = "finished") -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        run_status = self.RUN_STATUS[_check_status(status)]
        if self._closed:
            return
        self._closed = True
        self.client.set_terminated(self.run_id, status=run_status)


class MultiTracker(Tracker):
    """Fans each call out to several trackers; ``close`` closes them all, then re-raises the first error."""

    name = "multi"

    def __init__(self, trackers: Iterable[Tracker]) -> None:
        self.trackers = list(trackers)

    def log_config(self, cfg: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_config(cfg)

    def log_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_scalars(step, scalars)

    def close(self, status: str = "finished") -> None:
        _check_status(status)
        errors: list[BaseException] = []
        for t in self.trackers:
            try:
                t.close(status)
            except Exception as e:  # one tracker failing must not leave the others open
                logger.error("closing the %s tracker failed: %s", t.name, e)
                errors.append(e)
        if errors:
            raise errors[0]


TRACKERS: dict[str, tuple[type[Tracker], str]] = {"wandb": (WandbTracker, "wandb"), "mlflow": (MlflowTracker, "mlflow")}
"""Tracker name -> (class, the package it needs)."""


def _require(module: str, extra: str) -> Any:
    """Import ``module`` or raise a one-line ImportError that says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"the {extra} tracker needs the {module} package: pip install \"hiertree[{extra}]\"") from None


def _unknown(what: str, name: str, valid: Iterable[str]) -> ValueError:
    """A one-line ValueError naming the valid choices and the closest one."""
    valid = sorted(valid)
    hint = suggest(name, valid)
    return ValueError(f"unknown {what} {name!r}: valid are {', '.join(valid)}{hint}")


def _check_options(options: Mapping[str, Any]) -> None:
    """Options are ``{tracker name: {keyword: value}}``; every keyword must be one its class takes."""
    for key, kwargs in options.items():
        if key not in TRACKERS:
            raise _unknown("tracker in options", key, TRACKERS)
        if not isinstance(kwargs, Mapping):
            raise TypeError(f"options[{key!r}] must be a mapping of keyword arguments, got {type(kwargs).__name__}")
        allowed = set(inspect.signature(TRACKERS[key][0]).parameters) - {"run_dir", "run_name"}
        for kw in kwargs:
            if kw not in allowed:
                raise _unknown(f"{key} option", kw, allowed)


def build_trackers(names: Sequence[str], run_dir: str | Path, run_name: str | None = None,
                   options: Mapping[str, Mapping[str, Any]] | None = None) -> list[Tracker]:
    """The trackers named (from ``wandb``, ``mlflow``; repeats dropped), started for one run.

    ``options`` holds keyword arguments per tracker, e.g. ``{"wandb": {"project": "p", "mode": "online"},
    "mlflow": {"experiment": "p", "tracking_uri": "http://host:5000"}}``. Every name and package is checked
    before any run starts, and a tracker that fails to start closes the ones already started ("failed").
    """
    if isinstance(names, str):
        names = [names]
    options = dict(options or {})
    wanted = list(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    for n in wanted:
        if n not in TRACKERS:
            raise _unknown("tracker", n, TRACKERS)
    _check_options(options)
    for n in wanted:
        _require(TRACKERS[n][1], n)
    started: list[Tracker] = []
    try:
        for n in wanted:
            started.append(TRACKERS[n][0](run_dir, run_name, **options.get(n, {})))
    except BaseException:
        MultiTracker(started).close("failed")
        raise
    return started
