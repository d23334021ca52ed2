"""The training loop, readable top to bottom: set up → resume → epochs of steps → evaluate and save.

Runs on CPU in fp32 and on CUDA with bf16 autocast + channels_last; under ``torchrun`` it trains
with DistributedDataParallel (rank 0 evaluates and writes, every rank resumes from the same
checkpoint). Every epoch's data order and every sample's augmentation derive from (seed, epoch,
index), the data loaders draw from their own generators (not the global RNG that dropout uses) and
the schedule's length depends on ``train.epochs`` (or ``train.steps``) only, so a resumed run -- from an epoch boundary
or mid-epoch -- computes exactly what an uninterrupted one would have (bit-identical on CPU).

The step never waits for the device: the non-finite-loss flag goes to the fused AdamW as its
``found_inf`` (as GradScaler does), so a bad step leaves weights and optimizer state untouched, and
the flags and loss values are read back once every ``train.log_every`` steps (and at the end of an
epoch), where a run that had too many bad steps stops naming the first one over the limit.
"""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from hiertree.training import distributed
from hiertree.device import autocast_for, resolve_amp
from hiertree.checkpoint import load_checkpoint, model_card, save_checkpoint, unwrap
from hiertree.config import dump_config
from hiertree.config.options import Config, TrainOptions, validate_options
from hiertree.data import EpochSampler, Mixture, build_datasets, drop_bad_samples
from hiertree.data.loaders import Collate, labelled_nodes, loader_workers, val_loaders, worker_init
from hiertree.evaluation.evaluate import evaluate
from hiertree.inference.decoding import decode
from hiertree.inference.predictor import Views
from hiertree.losses import HierarchicalLoss
from hiertree.metrics import format_scores
from hiertree.models import HierSegModel, load_model, load_weights
from hiertree.training.run_state import Layout, Progress, TrainingError, check_resumable, restore, train_state
from hiertree.tree.taxonomy import Taxonomy
from hiertree.training.tblog import TrainLogger
from hiertree.training.trackers import MultiTracker, build_trackers

__all__ = ["train", "profile_steps", "StepPhases", "TrainingError"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- the loop
def train(cfg: dict, command: str = "", model: torch.nn.Module | None = None) -> dict:
    """Train a model as ``cfg`` says; returns ``{"run_dir", "best", "last_metrics", "steps", "stopped", "signal", "model"}``.

    SIGINT/SIGTERM (from the first line on) make it save a checkpoint and return with ``stopped``
    set; ``train.max_steps`` stops early (saving where it stopped) without changing the schedule,
    whose length is always ``train.steps`` (or ``train.epochs`` epochs) -- so a stopped run resumes onto the same curve.

    ``model`` replaces the one ``cfg["model"]`` describes (benchmarks train other architectures in the
    same loop); it must take 0..255 images and return per-level logits like :class:`HierSegModel`.
    """
    # a process group this call creates is torn down by it on every rank: a rank that reaches interpreter exit
    # with a live gloo group can abort ("terminate called without an active exception") while others still save
    owns_group = distributed.world_size() > 1 and not dist.is_initialized()
    try:
        with _StopFlag() as stop:
            run = _setup(cfg, command, model)
            return _run(run, stop)
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _run(run: "_Run", stop: "_StopFlag") -> dict:
    """Resume if asked, then epochs until the end, ``train.max_steps`` or a signal; trackers closed either way."""
    progress = _resume(run)
    _announce(run)
    run.logger = TrainLogger(run.run_dir, run.data.taxonomy, tensorboard="auto", resume=run.resumed) if run.main else None
    run.trackers = _trackers(run)
    stopped, status = None, "failed"
    try:
        stopped = _epochs(run, progress, stop)
        status = "killed" if stopped else "finished"
    finally:
        if run.trackers is not None:
            run.trackers.close(status)
    return _finish(run, progress, stopped, stop.signal)


def _epochs(run: "_Run", progress: Progress, stop: "_StopFlag") -> str | None:
    """Epochs until the end, ``train.max_steps`` or a signal; returns what stopped the run early, if anything."""
    stopped = None
    for epoch in range(progress.epoch, run.epochs):
        outcome = _train_epoch(run, progress, epoch, stop)
        if run.distributed:
            distributed.average_buffers(run.model)
        if outcome.stop and not outcome.epoch_done:  # a signal mid-epoch: save the position, no evaluation
            _save(run, progress, epoch, outcome.batch_in_epoch, None, ("last",), outcome.seconds)
            stopped = f"signal {stop.signal}"
            break
        metrics = _evaluate_if_due(run, epoch, outcome)
        _save_epoch(run, progress, epoch, outcome, metrics)
        progress.carried = 0.0
        if outcome.stop:
            stopped = f"signal {stop.signal}"
        if outcome.stop or outcome.hit_max:
            break
    return stopped


def _trackers(run: "_Run") -> MultiTracker | None:
    """``train.trackers`` (W&B, MLflow) on rank 0, given the resolved config once."""
    tcfg = run.opts.train
    if not (run.main and tcfg.trackers):
        return None
    options = {"wandb": {"project": tcfg.tracker_project, "mode": tcfg.wandb_mode},
               "mlflow": {"experiment": tcfg.tracker_project, "tracking_uri": tcfg.mlflow_uri}}
    trackers = MultiTracker(build_trackers(tcfg.trackers, run.run_dir, run.run_dir.name, options))
    trackers.log_config(run.cfg)
    return trackers


def _log_scalars(run: "_Run", step: int, scalars: dict, epoch: int | None = None) -> None:
    """Step scalars (``epoch`` None) or an epoch's row: TensorBoard/metrics.csv and the trackers."""
    if run.logger is not None and epoch is None:
        run.logger.log_step(step, scalars)
    elif run.logger is not None:
        run.logger.log_epoch(epoch, step, scalars)
    if run.trackers is not None:
        run.trackers.log_scalars(step, scalars if epoch is None else {"epoch": epoch, **scalars})


# ---------------------------------------------------------------------- setup
@dataclass(frozen=True)
class _Place:
    """Where and how a run computes: device, this process's rank among ``world``, precision, memory layout."""

    device: torch.device
    rank: int
    world: int
    amp: str
    channels_last: bool


@dataclass
class _Data:
    """What a run reads: the tree, the splits, the sampler and the loaders."""

    taxonomy: Taxonomy
    train_ds: Any
    val_ds: Any
    sampler: EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader | dict[str, DataLoader]  # one per evaluated source under data.sources


@dataclass
class _Optim:
    """What a step updates the weights with: the loss, AdamW (fused: it takes ``found_inf``), schedule, scaler."""

    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    fused: bool


@dataclass
class _Run:
    """Everything one training run holds, built by :func:`_setup`."""

    cfg: dict  # as given: saved with each checkpoint, handed to the datasets and trackers
    opts: Config  # the same, typed: what the loop reads
    command: str
    run_dir: Path
    place: _Place
    data: _Data
    model: torch.nn.Module
    optim: _Optim
    forward: Any = None  # the model as the step calls it (DDP, torch.compile)
    resumed: bool = False
    logger: TrainLogger | None = None
    trackers: MultiTracker | None = None
    preview: dict | None = None  # a few val images shown in TensorBoard after each evaluation
    last_metrics: dict | None = None
    phases: "StepPhases" = field(default_factory=lambda: StepPhases(None))  # off unless a benchmark times the steps
    running_stats: list[torch.Tensor] | None = None  # the BatchNorm buffers a bad step puts back
    teacher: torch.nn.Module | None = None  # train.teacher (self-distillation), eval mode, no gradients

    @property
    def main(self) -> bool:
        return self.place.rank == 0

    @property
    def distributed(self) -> bool:
        return self.place.world > 1

    @property
    def total_steps(self) -> int:
        """Batches of the whole run: the schedule's length (``train.steps``, else ``train.epochs`` epochs)."""
        return self.data.sampler.total_steps

    @property
    def epochs(self) -> int:
        """Epochs the run visits, the last one partly when ``train.steps`` ends mid-epoch."""
        return math.ceil(self.total_steps / self.data.sampler.batches_per_epoch)

    @property
    def layout(self) -> Layout:
        tcfg = self.opts.train
        return Layout(tcfg.batch_size, self.place.world, self.data.sampler.batches_per_epoch, self.epochs)


def _setup(cfg: dict, command: str, model: torch.nn.Module | None) -> _Run:
    """Device, seeds, data, model, loss, optimizer and schedule: everything before the first step."""
    opts = validate_options(Config, cfg, "config", error=TrainingError)
    place = _place(opts.train)
    run_dir = Path(opts.train.out_dir)
    data = _data(cfg, opts, place, run_dir)
    model = _model(opts, model, place, data.taxonomy)
    return _Run(cfg, opts, command, run_dir, place=place, data=data, model=model,
                optim=_optim(opts, model, place, data), teacher=_teacher(opts, place, data.taxonomy))


def _place(tcfg: TrainOptions) -> _Place:
    """Device and process group, threads, seeds, precision and layout."""
    device, rank, world = distributed.setup(tcfg.device, tcfg.dist_timeout)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    random.seed(tcfg.seed)
    np.random.seed(tcfg.seed)
    torch.manual_seed(tcfg.seed)
    channels_last = tcfg.channels_last is True or (tcfg.channels_last == "auto" and device.type == "cuda")
    return _Place(device, rank, world, resolve_amp(tcfg.amp, device), channels_last)


def _data(cfg: dict, opts: Config, place: _Place, run_dir: Path) -> _Data:
    """The taxonomy, both splits, the epoch sampler (weighted under data.sources) and the loaders."""
    tcfg = opts.train
    taxonomy = Taxonomy.load(opts.taxonomy)
    train_ds, val_ds = _datasets(cfg["data"], opts, taxonomy, run_dir, place.rank == 0)
    mixed = train_ds.source if isinstance(train_ds.source, Mixture) else None
    moving = mixed is not None and mixed.weights_start is not None
    sampler = EpochSampler(len(train_ds), tcfg.batch_size, tcfg.seed, place.rank, place.world,
                           weights=mixed.sample_weights() if mixed else None,
                           weights_start=mixed.sample_weights(start=True) if moving else None, epochs=tcfg.epochs,
                           total_steps=tcfg.steps)
    train_loader, val_loader = _loaders(opts, taxonomy, train_ds, val_ds, sampler, place.device)
    return _Data(taxonomy, train_ds, val_ds, sampler, train_loader, val_loader)


def _model(opts: Config, model: torch.nn.Module | None, place: _Place, taxonomy: Taxonomy) -> torch.nn.Module:
    """The config's HierSegModel (or a benchmark's own), frozen as train.* asks, on the device in its layout."""
    tcfg = opts.train
    # train.init_from replaces every weight: no ImageNet encoder to load first
    mcfg = {**opts.model.model_dump(), **({"encoder_weights": None} if tcfg.init_from else {})}
    model = (model if model is not None else HierSegModel.from_config(taxonomy, mcfg)).to(place.device)
    if tcfg.init_from:
        _init_from(model, tcfg.init_from, taxonomy)
    if tcfg.frozen_stages or tcfg.freeze_encoder_bn:
        _encoder_of(model).freeze(tcfg.frozen_stages, tcfg.freeze_encoder_bn)
    return model.to(memory_format=torch.channels_last) if place.channels_last else model


def _init_from(model: torch.nn.Module, source: str, taxonomy: Taxonomy) -> None:
    """``train.init_from``: every weight of a checkpoint (its best in a run folder) or shipped model, loaded before the
    first step; the tree must be the same and every tensor must fit (output stride and dropout may differ)."""
    ck = load_checkpoint(source, prefer="best")
    if ck["taxonomy"] != taxonomy:
        raise TrainingError(f"train.init_from={source!r}: its taxonomy {ck['taxonomy'].name!r} (levels "
                            f"{ck['taxonomy'].level_sizes}) differs from this run's {taxonomy.name!r} (levels "
                            f"{taxonomy.level_sizes}); fine-tune from a checkpoint of the same tree")
    problem = load_weights(unwrap(model), ck["state_dict"])
    if problem:
        verb = "fit" if problem[0] == "shape" else "match"
        raise TrainingError(f"train.init_from={source!r}: its weights do not {verb} this config's model ({problem[1]}); "
                            f"set model.* as in {ck['dir']}/config.yaml")
    log.info("initialised every weight from %s", ck["dir"])


def _teacher(opts: Config, place: _Place, taxonomy: Taxonomy) -> torch.nn.Module | None:
    """``train.teacher`` in eval mode without gradients, when ``loss.distill_weight`` asks for one."""
    weight, source = opts.loss.distill_weight, opts.train.teacher
    if (weight > 0) != bool(source):
        raise TrainingError("self-distillation needs both loss.distill_weight > 0 and train.teacher (a checkpoint, run "
                            f"folder or shipped model); got loss.distill_weight={weight}, train.teacher={source!r}")
    if not source:
        return None
    teacher, info = load_model(source, map_location=place.device, channels_last=place.channels_last)
    if info["taxonomy"] != taxonomy:
        raise TrainingError(f"train.teacher={source!r}: its taxonomy {info['taxonomy'].name!r} differs from this "
                            f"run's {taxonomy.name!r}; a teacher must predict the same tree")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def _teacher_logits(run: "_Run", images: torch.Tensor, sizes: list[torch.Size]) -> list[torch.Tensor] | None:
    """The teacher's per-level log-probabilities at the model's logits' sizes (mean of the image and its mirror
    with ``train.teacher_hflip``), or None without a teacher."""
    if run.teacher is None:
        return None
    views = [images, images.flip(-1)] if run.opts.train.teacher_hflip else [images]
    with torch.no_grad():
        probs = None
        for k, view in enumerate(views):
            out = run.teacher(view, upsample=run.opts.loss.full_resolution)
            out = [F.interpolate(z.float(), size=s[2:], mode="bilinear", align_corners=False)
                   if z.shape[2:] != s[2:] else z.float() for z, s in zip(out, sizes)]
            out = [z.softmax(1).flip(-1) if k else z.softmax(1) for z in out]
            probs = out if probs is None else [a + b for a, b in zip(probs, out)]
        return [(p / len(views)).clamp_min(1e-8).log() for p in probs]


def _optim(opts: Config, model: torch.nn.Module, place: _Place, data: _Data) -> _Optim:
    """The loss, fused AdamW, the schedule over the whole run and the fp16 scaler."""
    tcfg, lcfg = opts.train, opts.loss
    weights = _class_weights(lcfg.class_weights, data.train_ds, data.taxonomy, place.rank == 0)
    criterion = HierarchicalLoss(data.taxonomy, **{**lcfg.model_dump(), "class_weights": weights}).to(place.device)
    criterion.check_targets = False  # SegDataset checked every mask: no host sync per step for it
    fused = place.device.type in ("cuda", "cpu")  # fused AdamW takes found_inf: a bad step is skipped on the device
    optimizer = torch.optim.AdamW(_param_groups(model, tcfg.weight_decay), lr=tcfg.lr, fused=fused)
    # the schedule spans train.steps (or train.epochs) whatever train.max_steps says: max_steps only stops the
    # run early, so stopping at max_steps and resuming lands on the uninterrupted run's curve
    scheduler = _schedule(optimizer, tcfg, max(data.sampler.total_steps, 1))
    scaler = torch.amp.GradScaler(place.device.type, enabled=place.amp == "fp16")
    return _Optim(criterion, optimizer, scheduler, scaler, fused)


def _encoder_of(model: torch.nn.Module) -> Any:
    """The encoder that ``train.frozen_stages`` / ``train.freeze_encoder_bn`` act on (a HierSegModel's)."""
    encoder = getattr(model, "encoder", None)
    if not hasattr(encoder, "freeze"):
        raise TrainingError(f"train.frozen_stages / train.freeze_encoder_bn need a HierSegModel encoder; "
                            f"{type(model).__name__} has none: set them to 0 / false")
    return encoder


def _datasets(data_cfg: dict, opts: Config, taxonomy: Taxonomy, run_dir: Path, main: bool) -> tuple[Any, Any]:
    """The train and val splits; with ``data.skip_bad`` the bad samples are dropped and listed in skipped.json."""
    train_ds, val_ds = build_datasets(data_cfg, taxonomy, seed=opts.train.seed)
    skipped = drop_bad_samples(train_ds) + drop_bad_samples(val_ds)
    if main and opts.data.skip_bad:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "skipped.json").write_text(json.dumps({"count": len(skipped), "samples": skipped}, indent=2))
        if skipped:
            log.warning("data.skip_bad: skipping %d bad sample(s), listed in %s", len(skipped), run_dir / "skipped.json")
    return train_ds, val_ds


def _class_weights(setting: Any, train_ds: Any, taxonomy: Taxonomy, main: bool) -> list[list[float]] | None:
    """``loss.class_weights``: as given, or ``auto``: median-frequency weights of the training masks."""
    if setting != "auto":
        return setting
    from hiertree.data.stats import dataset_stats, median_frequency_weights

    weights = median_frequency_weights(dataset_stats(train_ds, taxonomy))
    if main:
        for level, row in enumerate(weights):
            log.info("class weights L%d (median frequency): %s", level,
                     ", ".join(f"{n} {w:.2f}" for n, w in zip(taxonomy.classes(level), row)))
    return weights


def _loaders(opts: Config, taxonomy: Taxonomy, train_ds: Any, val_ds: Any, sampler: EpochSampler,
             device: torch.device) -> tuple[DataLoader, DataLoader]:
    # the loaders get their own generators: drawing worker seeds from the global RNG would shift
    # the dropout stream by one draw per loader iterator, and a resumed run creates them afresh
    tcfg, workers = opts.train, loader_workers(opts.train.num_workers)
    seed = tcfg.seed
    extra = dict(persistent_workers=True, prefetch_factor=4) if workers > 0 else {}
    train_loader = DataLoader(train_ds, batch_size=tcfg.batch_size, sampler=sampler, drop_last=True,
                              collate_fn=Collate(taxonomy.ignore_index), generator=torch.Generator().manual_seed(seed),
                              num_workers=workers, pin_memory=device.type == "cuda",
                              worker_init_fn=worker_init if workers else None, **extra)
    rank, world = (sampler.rank, sampler.world)  # every rank scores its own share of the val split
    val_loader = val_loaders(val_ds, taxonomy, opts.eval.batch_size, tcfg.num_workers, seed, rank, world)
    return train_loader, val_loader


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _cosine(start: float, end: float, t: float) -> float:
    return end + (start - end) * (1.0 + math.cos(math.pi * t)) / 2.0


def _schedule(optimizer: torch.optim.Optimizer, tcfg: TrainOptions, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-batch learning-rate factor: linear warmup then poly decay, one-cycle, or constant.

    One function of (batch, total batches) for every kind, so a resume that changes ``train.epochs`` simply
    continues on the new curve (torch's OneCycleLR would restore its old length and refuse to step on).
    One-cycle is shaped like torch's OneCycleLR: cosine from lr/25 up to lr over the warmup (at least 1 %
    of the run), then cosine down to lr/1e4 (OneCycleLR's default ends at lr/2.5e5); momentum is not cycled.
    The schedule advances on every batch, a skipped (non-finite) one included, as with torch's GradScaler.
    """
    kind, warmup = tcfg.schedule, min(tcfg.warmup_steps, max(total_steps - 1, 0))
    rise = max(warmup, math.ceil(0.01 * total_steps), 1)

    def factor(step: int) -> float:
        if kind == "onecycle":
            if step < rise:
                return _cosine(1 / 25, 1.0, step / rise)
            return _cosine(1.0, 1e-4, min((step - rise) / max(total_steps - rise, 1), 1.0))
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        return max(1.0 - (step - warmup) / max(total_steps - warmup, 1), 0.0) ** tcfg.poly_power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _resume(run: _Run) -> Progress:
    """``train.resume``: load weights and training state, then wrap the model for DDP / torch.compile."""
    resume = run.opts.train.resume
    if resume == "auto":
        resume = str(run.run_dir) if (run.run_dir / "last" / "train_state.pt").is_file() else None
    progress = Progress()
    if resume:
        ck = load_checkpoint(resume, prefer="last")
        check_resumable(ck, run.cfg, run.data.taxonomy)
        unwrap(run.model).load_state_dict(ck["state_dict"])
        progress = restore(ck["dir"], run.optim.optimizer, run.optim.scheduler, run.optim.scaler, run.layout, speak=run.main)
        run.resumed = True
        log.info("resumed from %s at epoch %d, step %d", ck["dir"], progress.epoch, progress.step)
    if run.distributed:
        ids = [run.place.device.index] if run.place.device.type == "cuda" else None
        run.model = torch.nn.parallel.DistributedDataParallel(run.model, device_ids=ids)
    run.forward = torch.compile(run.model) if run.opts.train.compile else run.model
    return progress


def _announce(run: _Run) -> None:
    if not run.main:
        return
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "config.yaml").write_text(dump_config(run.cfg))
    params = sum(p.numel() for p in run.model.parameters()) / 1e6
    log.info("%s", run.data.taxonomy.describe())
    log.info("%d train / %d val samples, device %s, amp %s, %.2f M parameters, %d steps", len(run.data.train_ds),
             len(run.data.val_ds), run.place.device, run.place.amp, params, run.total_steps)
    mixed = run.data.train_ds.source
    if isinstance(mixed, Mixture):
        total, starts = sum(mixed.weights), mixed.weights_start
        start_total = sum(starts) if starts is not None else None
        for k, (name, part, w) in enumerate(zip(mixed.names, mixed.parts, mixed.weights)):
            share = f"{100 * w / total:.0f} %"
            if starts is not None:
                share = f"{100 * starts[k] / start_total:.0f} % (first step) to {share} (last step)"
            log.info("  source %s: %d train samples, %s of each batch", name, len(part), share)


# ---------------------------------------------------------------------- one epoch, one step
class StepPhases:
    """Wall seconds of each step's phases: ``data`` (waiting for the loader, and the loop's bookkeeping), ``forward``
    (with the loss), ``backward``, ``optimizer``. Off (every mark a no-op) unless given a device: benchmarks only,
    since on CUDA each mark waits for the device."""

    def __init__(self, device: torch.device | None) -> None:
        self.device, self.seconds, self._last = device, {}, time.perf_counter()

    def mark(self, phase: str) -> None:
        if self.device is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds.setdefault(phase, []).append(now - self._last)
        self._last = now


def profile_steps(cfg: dict, steps: int, warmup: int = 3) -> dict:
    """Phase seconds (:class:`StepPhases`) of ``steps`` training steps after ``warmup`` ones, taken exactly as
    :func:`train` takes them (the real loader, model, loss and optimizer); nothing is saved or evaluated."""
    cfg = {**cfg, "train": {**cfg["train"], "max_steps": warmup + steps, "resume": None, "trackers": []}}
    with _StopFlag() as stop:
        run = _setup(cfg, "", None)
        progress = _resume(run)
        run.phases = StepPhases(run.place.device)
        _train_epoch(run, progress, 0, stop)
    seconds = {k: v[warmup:] for k, v in run.phases.seconds.items()}
    return {"batch_size": run.opts.train.batch_size, "seconds": seconds}


@dataclass
class _Window:
    """What the steps since the last read-back left on the device: loss values, bad flags, part sums."""

    batches: list[int] = field(default_factory=list)  # batch_in_epoch of each step
    losses: list[torch.Tensor] = field(default_factory=list)
    bad: list[torch.Tensor] = field(default_factory=list)  # agreed over ranks
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # per loss part, over the good steps

    def clear(self) -> None:
        self.batches.clear()
        self.losses.clear()
        self.bad.clear()
        self.sums.clear()


@dataclass
class _Epoch:
    """How an epoch went, read back from the device."""

    start: float
    batch_in_epoch: int
    steps: int = 0  # this run's good steps of this epoch
    images: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    stop: bool = False
    hit_max: bool = False
    epoch_done: bool = False
    carried: float = 0.0
    eval_seconds: float = 0.0  # of ``seconds``, the evaluation's share

    @property
    def seconds(self) -> float:
        return time.time() - self.start + self.carried


def _train_epoch(run: _Run, progress: Progress, epoch: int, stop: "_StopFlag") -> _Epoch:
    """Steps over one epoch (from ``progress.batch_in_epoch`` on a mid-epoch resume), read back every log_every."""
    tcfg = run.opts.train
    run.data.sampler.set_epoch(epoch, progress.batch_in_epoch)
    outcome = _Epoch(time.time(), progress.batch_in_epoch, carried=progress.carried)
    progress.batch_in_epoch = 0
    bar = _progress_bar(run, epoch)
    window, max_steps = _Window(), tcfg.max_steps
    end = min(run.data.sampler.batches_per_epoch, run.total_steps - epoch * run.data.sampler.batches_per_epoch)  # train.steps
    run.model.train()
    for batch in bar:
        _step(run, batch, window, outcome.batch_in_epoch + 1)
        outcome.batch_in_epoch += 1
        outcome.images += batch["image"].shape[0]
        pending = len(window.batches)
        at_max = bool(max_steps and progress.step + pending >= max_steps)
        if outcome.batch_in_epoch >= end:
            break
        if pending >= tcfg.log_every or at_max or (stop.signal is not None and not run.distributed):
            _read_back(run, progress, epoch, window, outcome, bar)
            outcome.stop = distributed.agree([stop.signal is not None], run.place.device)[0]
            outcome.hit_max = bool(max_steps and progress.step >= max_steps)
            if outcome.stop or outcome.hit_max:
                break
    _read_back(run, progress, epoch, window, outcome, bar)
    outcome.stop = distributed.agree([stop.signal is not None], run.place.device)[0]  # a signal in the last window
    outcome.hit_max = bool(max_steps and progress.step >= max_steps)
    outcome.epoch_done = outcome.batch_in_epoch >= end
    return outcome


def _progress_bar(run: _Run, epoch: int) -> Any:
    if not (run.main and run.opts.train.progress):
        return run.data.train_loader
    from tqdm import tqdm

    return tqdm(run.data.train_loader, desc=f"epoch {epoch + 1}/{run.epochs}", leave=False,
                dynamic_ncols=True)


def _step(run: _Run, batch: dict, window: _Window, batch_in_epoch: int) -> None:
    """One optimizer step that never waits for the device; a non-finite loss (or an fp16 step the gradient scaler
    skips) updates nothing: no weight, no optimizer state, no BatchNorm statistic."""
    run.phases.mark("data")
    images = batch["image"].to(run.place.device, non_blocking=True)
    if run.place.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    masks = batch["mask"].to(run.place.device, non_blocking=True)
    stats = _running_stats(run)
    before = [b.clone() for b in stats]  # the forward moves them: a bad step puts them back (on the device)
    with autocast_for(run.place.device, run.place.amp):
        logits = run.forward(images, upsample=run.opts.loss.full_resolution)
        teacher = _teacher_logits(run, images, [z.shape for z in logits])
        extra = {} if teacher is None else {"teacher": teacher}  # a loss without distillation need not take it
        loss, parts = run.optim.criterion([z.float() for z in logits], masks, partial=batch.get("partial"), **extra)
    run.phases.mark("forward")
    bad = (~torch.isfinite(loss.detach())).float()
    if run.distributed:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # every rank skips a step that is bad on any rank
    run.optim.optimizer.zero_grad(set_to_none=True)
    run.optim.scaler.scale(loss).backward()
    run.phases.mark("backward")
    bad = _optimizer_step(run, bad)
    run.optim.scheduler.step()
    for buffer, old in zip(stats, before):
        buffer.copy_(torch.where(bad > 0, old, buffer))
    for k, v in parts.items():
        v = torch.where(bad > 0, torch.zeros_like(v), v.detach().float())
        window.sums[k] = window.sums[k] + v if k in window.sums else v
    window.batches.append(batch_in_epoch)
    window.losses.append(loss.detach().float())
    window.bad.append(bad)
    run.phases.mark("optimizer")


def _running_stats(run: _Run) -> list[torch.Tensor]:
    """The BatchNorm running statistics (and counters) of the model: what a forward pass changes besides activations."""
    if run.running_stats is None:
        norms = [m for m in unwrap(run.model).modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        run.running_stats = [b for m in norms for b in m.buffers(recurse=False)]
    return run.running_stats


def _optimizer_step(run: _Run, bad: torch.Tensor) -> torch.Tensor:
    """Clip, step and (fp16) update the scaler without a host sync; returns the step's bad flag, which also marks
    a step the gradient scaler skipped for overflowing gradients (its scale went down)."""
    optim, clip = run.optim, run.opts.train.grad_clip
    if clip:
        optim.scaler.unscale_(optim.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
    if optim.scaler.is_enabled():  # fp16: a non-finite loss gives non-finite gradients, which GradScaler skips
        scale = optim.scaler._scale.clone()  # noqa: SLF001 - the device tensor; get_scale() would sync
        optim.scaler.step(optim.optimizer)
        optim.scaler.update()
        return torch.maximum(bad, (optim.scaler._scale < scale).float())  # noqa: SLF001
    if optim.fused:
        optim.optimizer.found_inf = bad
        optim.optimizer.step()
    elif not bool(bad):  # an optimizer without found_inf: this device pays one sync per step
        optim.optimizer.step()
    return bad


def _read_back(run: _Run, progress: Progress, epoch: int, window: _Window, outcome: _Epoch, bar: Any) -> None:
    """The one host sync per window: count good and bad steps, stop on too many bad ones, log the losses."""
    if not window.batches:
        return
    n, keys = len(window.batches), list(window.sums)
    values = torch.cat([torch.stack(window.bad), torch.stack(window.losses),
                        torch.stack([window.sums[k] for k in keys])]).cpu().tolist()
    bad, losses, sums = values[:n], values[n:2 * n], dict(zip(keys, values[2 * n:]))
    good = 0
    for flag, value, batch_in_epoch in zip(bad, losses, window.batches):
        if flag:
            _bad_step(run, progress, epoch, batch_in_epoch, value)
        else:
            progress.step += 1
            good += 1
    outcome.steps += good
    for k, v in sums.items():
        outcome.sums[k] = outcome.sums.get(k, 0.0) + v
    if good:
        lr = run.optim.scheduler.get_last_lr()[0]
        _log_scalars(run, progress.step, {"lr": lr, **{f"loss/{k}": v / good for k, v in sums.items()}})
    if good and bar is not run.data.train_loader:
        bar.set_postfix(loss=f"{sums['total'] / good:.4f}", lr=f"{run.optim.scheduler.get_last_lr()[0]:.2e}")
    window.clear()


def _bad_step(run: _Run, progress: Progress, epoch: int, batch_in_epoch: int, value: float) -> None:
    """Count one skipped step; past ``train.max_bad_steps`` the run stops, naming it."""
    progress.bad_steps += 1
    limit = run.opts.train.max_bad_steps
    if progress.bad_steps > limit:
        last = run.run_dir / "last"
        where = last.resolve() if last.exists() else "none yet"
        raise TrainingError(
            f"non-finite loss ({'on another rank' if math.isfinite(value) else value}) at step {progress.step + 1} "
            f"(epoch {epoch + 1}, batch {batch_in_epoch}); {progress.bad_steps} bad step(s) > "
            f"train.max_bad_steps={limit}. Last good checkpoint: {where}. Lower train.lr, set train.grad_clip, or "
            "check the data; resume with train.resume=auto"
        )
    if run.main:
        log.warning("skipped step %d: non-finite loss (%d/%d)", progress.step + 1, progress.bad_steps, limit)


# ---------------------------------------------------------------------- evaluate, save, finish
def _evaluate_if_due(run: _Run, epoch: int, outcome: _Epoch) -> dict | None:
    """Score the val split every ``train.eval_every`` epochs and at the end; under DDP every rank scores its share
    and the counts are summed (no rank waits at a collective while another evaluates alone); rank 0 logs."""
    tcfg, ecfg = run.opts.train, run.opts.eval
    final = epoch + 1 == run.epochs or outcome.hit_max or outcome.stop
    if not ((epoch + 1) % tcfg.eval_every == 0 or final):
        return None
    started = time.time()
    metrics = evaluate(unwrap(run.model), run.data.val_loader, run.data.taxonomy, run.place.device,
                       views=Views.from_options(ecfg), amp=run.place.amp, max_batches=ecfg.max_batches,
                       flat=run.opts.model.flat, channels_last=run.place.channels_last,
                       labelled=labelled_nodes(run.cfg["data"], run.data.taxonomy),
                       sharded=run.distributed)  # each rank its share, the counts summed over the ranks
    metrics["epoch"] = epoch + 1
    outcome.eval_seconds = round(time.time() - started, 2)
    run.last_metrics = metrics
    n = max(outcome.steps, 1)
    log.info("epoch %d/%d  loss %.4f  %.1f img/s", epoch + 1, run.epochs, outcome.sums.get("total", 0) / n,
             outcome.images / (time.time() - outcome.start))
    log.info("%s", format_scores(metrics))
    log.info("  raw per-head argmax: tree-consistent pixels %.4f", metrics["raw"]["consistency"])
    _preview(run, epoch)
    return metrics


def _preview(run: _Run, epoch: int) -> None:
    """A few val images with their per-level predictions in TensorBoard."""
    if run.logger is None or run.logger.writer is None:
        return
    if run.preview is None:
        loader = run.data.val_loader
        run.preview = next(iter(next(iter(loader.values())) if isinstance(loader, dict) else loader))
    plain = unwrap(run.model).eval()
    with torch.no_grad(), autocast_for(run.place.device, run.place.amp):
        logits = plain(run.preview["image"][:4].to(run.place.device))
    shown = decode(logits, run.data.taxonomy, flat=run.opts.model.flat)["levels"]
    run.logger.log_images(epoch + 1, run.preview["image"][:4], run.preview["mask"][:4], [p.cpu() for p in shown])
    plain.train()


def _score(result: dict) -> float:
    """Model selection: the mean over levels of the foreground mIoU."""
    return float(np.mean([lv["mIoU"] for lv in result["tree"]["levels"]]))


def _save_epoch(run: _Run, progress: Progress, epoch: int, outcome: _Epoch, metrics: dict | None) -> None:
    """Checkpoint (``best`` too when the score improved) and one row of metrics.csv."""
    links: tuple[str, ...] = ("last",)
    if metrics is not None and _score(metrics) > progress.best:
        progress.best = _score(metrics)
        links = ("last", "best")
    if outcome.epoch_done:
        _save(run, progress, epoch + 1, 0, metrics, links, outcome.seconds)
    else:  # stopped by max_steps mid-epoch: resume continues this epoch where it stopped
        _save(run, progress, epoch, outcome.batch_in_epoch, metrics, links, outcome.seconds)
    if not run.main:
        return
    n = max(outcome.steps, 1)  # this run's finite steps of this epoch: what ``sums`` holds
    row = {"lr": run.optim.scheduler.get_last_lr()[0], "seconds": round(outcome.seconds, 2),
           **{f"loss/{k}": round(v / n, 6) for k, v in outcome.sums.items()}}
    if metrics is not None:  # "seconds" includes the evaluation, "eval_seconds" is its share
        row.update({f"mIoU/L{lv['level']}": round(lv["mIoU"], 6) for lv in metrics["tree"]["levels"]})
        row["eval_seconds"] = outcome.eval_seconds
    _log_scalars(run, progress.step, row, epoch=epoch + 1)


def _save(run: _Run, progress: Progress, epoch: int, batch_in_epoch: int, metrics: dict | None,
          links: tuple[str, ...], seconds: float) -> None:
    if not run.main:
        return
    state = train_state(run.optim.optimizer, run.optim.scheduler, run.optim.scaler, progress=progress, layout=run.layout,
                        epoch=epoch, batch_in_epoch=batch_in_epoch, epoch_seconds=seconds)
    save_checkpoint(run.run_dir, f"ckpt-{progress.step:07d}", run.model, run.cfg, run.data.taxonomy, metrics=metrics,
                    train_state=state, links=links, model_card=model_card(run.cfg, run.data.taxonomy, metrics, run.command))


def _finish(run: _Run, progress: Progress, stopped: str | None, signum: int | None) -> dict:
    if run.distributed:
        distributed.check_ranks_agree(run.model)
    if run.logger is not None:
        run.logger.close()
    if run.main and run.last_metrics is not None:
        (run.run_dir / "metrics.json").write_text(json.dumps(run.last_metrics, indent=2))
    if run.distributed:  # no rank leaves (and tears the group down) before rank 0 has written everything
        dist.barrier()
    return {"run_dir": run.run_dir, "best": progress.best, "last_metrics": run.last_metrics, "steps": progress.step,
            "stopped": stopped, "signal": signum, "model": unwrap(run.model)}


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to save and leave at the next step boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("got signal %d; saving a checkpoint and stopping after this step", signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
