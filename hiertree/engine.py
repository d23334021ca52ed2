"""The training loop, readable top to bottom: data → model → loss → AdamW → evaluate → checkpoint.

Runs on CPU in fp32 and on CUDA with bf16 autocast + channels_last; under ``torchrun`` it trains
with DistributedDataParallel (rank 0 evaluates and writes, every rank resumes from the same
checkpoint). Every epoch's data order and every sample's augmentation derive from (seed, epoch,
index), the data loaders draw from their own generators (not the global RNG that dropout uses) and
the schedule's length depends on ``train.epochs`` only, so a resumed run -- from an epoch boundary
or mid-epoch -- computes exactly what an uninterrupted one would have (bit-identical on CPU).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from hiertree.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, state_digest, unwrap
from hiertree.config import dump_config
from hiertree.data import DataError, MaskFolder, SegDataset, build_datasets, pad_collate, size_ordered
from hiertree.evaluate import autocast_for, evaluate
from hiertree.losses import HierarchicalLoss
from hiertree.metrics import format_table
from hiertree.models import HierSegModel
from hiertree.models.hierseg import decode
from hiertree.taxonomy import Taxonomy
from hiertree.tblog import TrainLogger

__all__ = ["train", "TrainingError", "EpochSampler", "resolve_device", "build_model", "model_card", "drop_bad_samples"]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite losses, mismatched resume); the message says what to do."""


# ---------------------------------------------------------------------- small pieces
class EpochSampler(Sampler[int]):
    """Shuffled indices for one epoch, seeded by (seed, epoch), sharded over ranks, resumable mid-epoch.

    Each yielded value is ``(epoch + 1) * len(dataset) + index`` -- always past ``len``, epoch 0
    included -- so :class:`~hiertree.data.SegDataset` seeds that sample's augmentation from
    (epoch, index) alone, whatever worker loads it and wherever in the epoch a run resumed.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.skip_batches = 0, 0
        per_rank = n // world
        self.batches_per_epoch = per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise TrainingError(
                f"the training split has {n} samples, fewer than one batch of {batch_size} per rank ({world}); "
                "lower train.batch_size or add data"
            )

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip_batches) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        usable = self.batches_per_epoch * self.batch_size
        mine = order[self.rank :: self.world][:usable]
        for i in mine[self.skip_batches * self.batch_size :].tolist():
            yield (self.epoch + 1) * self.n + i


def resolve_device(spec: str, flag: str | None = None) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; a TrainingError naming ``flag`` (a CLI option) or the config key."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:  # a malformed name
        where = f"{flag} {spec!r}" if flag else f"train.device={spec!r}"
        raise TrainingError(f"{where} is not a device ({err}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        where, fix = (f"{flag} {spec}", f"{flag} auto") if flag else (f"train.device={spec!r}", "device=auto")
        raise TrainingError(f"{where} but CUDA is not available here; use {fix} or cpu")
    return device


def build_model(cfg: dict, taxonomy: Taxonomy) -> HierSegModel:
    return HierSegModel.from_config(taxonomy, cfg["model"])


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _cosine(start: float, end: float, t: float) -> float:
    return end + (start - end) * (1.0 + math.cos(math.pi * t)) / 2.0


def _schedule(optimizer: torch.optim.Optimizer, tcfg: dict, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step learning-rate factor: linear warmup then poly decay, one-cycle, or constant.

    One function of (step, total_steps) for every kind, so a resume that changes ``train.epochs`` simply
    continues on the new curve (torch's OneCycleLR would restore its old length and refuse to step on).
    One-cycle is shaped like torch's OneCycleLR: cosine from lr/25 up to lr over the warmup (at least 1 %
    of the run), then cosine down to lr/1e4 (OneCycleLR's default ends at lr/2.5e5); momentum is not cycled.
    """
    kind, warmup = tcfg["schedule"], min(tcfg["warmup_steps"], max(total_steps - 1, 0))
    if kind not in ("poly", "onecycle", "constant"):
        raise TrainingError(f"train.schedule must be poly, onecycle or constant, got {kind!r}")
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
        return max(1.0 - (step - warmup) / max(total_steps - warmup, 1), 0.0) ** tcfg["poly_power"]

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():  # this process's device only: touching every GPU would open a context on each
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # written by an older version: one state per visible GPU
        cuda = cuda[torch.cuda.current_device()] if torch.cuda.is_available() and len(cuda) > torch.cuda.current_device() else None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


def _score(result: dict) -> float:
    """Model selection: the mean over levels of the foreground mIoU."""
    return float(np.mean([lv["mIoU"] for lv in result["tree"]["levels"]]))


def model_card(cfg: dict, taxonomy: Taxonomy, metrics: dict | None, command: str) -> str:
    """README.md written into every checkpoint folder."""
    lines = [
        f"# hiertree checkpoint: {taxonomy.name}",
        "",
        f"- encoder: `{cfg['model']['encoder']}` (initial weights: `{cfg['model']['encoder_weights']}`), "
        f"output stride {cfg['model']['output_stride']}, decoder channels {cfg['model']['decoder_channels']}, "
        f"{'flat leaf head' if cfg['model']['flat'] else 'one head per level'}",
        f"- data: `{cfg['data']['kind']}`" + (f" at `{cfg['data']['root']}`" if cfg["data"]["root"] else ""),
        f"- command: `{command}`",
        "",
        "## Taxonomy",
        "",
        "```",
        taxonomy.describe(),
        "```",
    ]
    if metrics:
        lines += ["", f"## Validation (epoch {metrics.get('epoch')})", "", "| level | mIoU | mIoU with bg | pixel acc |", "| --- | --- | --- | --- |"]
        for lv in metrics["tree"]["levels"]:
            lines.append(f"| L{lv['level']} | {lv['mIoU']:.4f} | {lv['mIoU_with_background']:.4f} | {lv['pixel_accuracy']:.4f} |")
    lines += ["", "Load it with `hiertree.checkpoint.load_model(<this folder>)` or `python eval.py --checkpoint <this folder>`.", ""]
    return "\n".join(lines)


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
        print(f"\nhiertree: got signal {signum}; saving a checkpoint and stopping after this step", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _worker_init(worker_id: int) -> None:
    """Data-loader workers ignore SIGINT: Ctrl-C reaches the whole process group, and a worker dying of
    it would break the loader while the main process saves. SIGTERM keeps its default, because
    multiprocessing stops workers with it at exit; send SIGTERM to the main process only.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _GoodSamples:
    """The samples of a source that passed :func:`drop_bad_samples`, re-indexed 0..n-1."""

    def __init__(self, source: MaskFolder, keep: list[int]) -> None:
        self.source, self.keep = source, keep

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, index: int) -> Any:
        return self.source[self.keep[index]]

    def mask_size(self, index: int) -> tuple[int, int] | None:
        return self.source.mask_size(self.keep[index])


def drop_bad_samples(dataset: SegDataset, threads: int = 4) -> list[dict[str, str]]:
    """With ``data.skip_bad``: read every sample of a folder split once, here, and keep only the good ones.

    Scanning in the calling process (threads; decoding releases the GIL) gives one complete,
    deterministic list whatever the number of data-loader workers -- workers only hold copies of the
    dataset, so what they skip never reaches the main process. Returns ``[{"split", "id", "reason"}]``;
    a no-op (``[]``) for other sources or without ``skip_bad``.
    """
    src = dataset.source
    if not isinstance(src, MaskFolder) or not src.skip_bad:
        return []

    def check(i: int) -> dict[str, str] | None:
        try:
            src.load(i)
        except DataError as err:
            return {"split": src.split, "id": src.ids[i], "reason": str(err)}
        return None

    with ThreadPoolExecutor(max(1, threads)) as pool:
        found = list(pool.map(check, range(len(src))))
    bad = [r for r in found if r is not None]
    if len(bad) == len(found):
        raise DataError(f"split {src.split!r} of {src.root}: every sample is bad, e.g. {bad[0]['reason']}")
    if bad:
        dataset.source = _GoodSamples(src, [i for i, r in enumerate(found) if r is None])
    return bad


def _check_resumable(ck: dict, cfg: dict, taxonomy: Taxonomy) -> None:
    """The checkpoint must hold training state for this very model and taxonomy."""
    where = ck["dir"]
    if ck["taxonomy"] != taxonomy:
        theirs, ours = ck["taxonomy"], taxonomy
        raise TrainingError(
            f"cannot resume from {where}: its taxonomy {theirs.name!r} (levels {theirs.level_sizes}) differs from "
            f"this config's {cfg['taxonomy']!r} ({ours.name!r}, levels {ours.level_sizes}); resume with the run's own "
            f"taxonomy ({where}/taxonomy.yaml) or start a new run in another train.out_dir"
        )
    theirs = ck["config"].get("model", {})
    diff = [f"model.{k}: checkpoint {theirs.get(k)!r}, config {cfg['model'].get(k)!r}"
            for k in sorted(set(theirs) | set(cfg["model"]))
            if k != "encoder_weights" and theirs.get(k) != cfg["model"].get(k)]
    if diff:
        raise TrainingError(
            f"cannot resume from {where}: the model differs ({'; '.join(diff)}); set these keys as in "
            f"{where}/config.yaml or start a new run in another train.out_dir"
        )
    if not (where / "train_state.pt").is_file():
        raise CheckpointError(
            f"{where} holds weights but no train_state.pt (optimizer, schedule, RNG), so training cannot resume "
            "from it; point train.resume at a run folder written by train.py, or drop train.resume"
        )


def _load_train_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read training state ({type(err).__name__}: {err}); "
                              "resume from an older checkpoint folder of the run instead") from None
    missing = [k for k in ("optimizer", "scheduler", "scaler", "step", "epoch", "batch_in_epoch", "best", "rng")
               if k not in state]
    if missing:
        raise CheckpointError(f"{path}: training state lacks {missing}; was it written by another hiertree version?")
    return state


def _agree(flags: list[bool], distributed: bool, device: torch.device) -> list[bool]:
    """Each flag true on any rank is true on every rank (so all ranks skip or stop at the same step)."""
    if not distributed:
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def _average_buffers(model: torch.nn.Module) -> None:
    """DDP: average floating buffers (BatchNorm running stats) over ranks before evaluating or saving.

    DDP broadcasts rank 0's buffers at each forward, but the last forward's update leaves every rank
    with its own; averaging makes all ranks (and the checkpoint) hold the same, better estimate.
    """
    world = dist.get_world_size()
    for buf in unwrap(model).buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(world)


def _check_ranks_agree(model: torch.nn.Module, main_process: bool) -> str:
    """DDP: every rank must end with the same weights and buffers; returns their sha256."""
    digest = state_digest(unwrap(model).state_dict())
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise TrainingError(f"after training the ranks hold different weights (sha256 per rank: {digests}); "
                            "this is a bug or a non-deterministic op under DDP -- please report it")
    if main_process:
        print(f"hiertree: all {len(digests)} ranks hold identical weights (sha256 {digest})")
    return digest


# ---------------------------------------------------------------------- the loop
def train(cfg: dict, command: str = "", model: torch.nn.Module | None = None) -> dict:
    """Train a model as ``cfg`` says; returns ``{"run_dir", "best", "last_metrics", "steps", "stopped", "signal", "model"}``.

    SIGINT/SIGTERM (from the first line on) make it save a checkpoint and return with ``stopped``
    set; ``train.max_steps`` stops early (saving where it stopped) without changing the schedule,
    whose length is always ``train.epochs`` epochs -- so a stopped run resumes onto the same curve.

    ``model`` replaces the one ``cfg["model"]`` describes (benchmarks train other architectures in the
    same loop); it must take 0..255 images and return per-level logits like :class:`HierSegModel`.
    """
    # a process group this call creates is torn down by it on every rank: a rank that reaches interpreter exit
    # with a live gloo group can abort ("terminate called without an active exception") while others still save
    owns_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    try:
        with _StopFlag() as stop:
            return _train(cfg, command, stop, model)
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: dict, command: str, stop: _StopFlag, model: torch.nn.Module | None = None) -> dict:
    tcfg = cfg["train"]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    device = resolve_device(tcfg["device"])
    if distributed:
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    else:
        rank = 0
    main_process = rank == 0
    if tcfg["threads"]:
        torch.set_num_threads(tcfg["threads"])
    seed = tcfg["seed"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    amp = tcfg["amp"] if tcfg["amp"] != "auto" else ("bf16" if device.type == "cuda" else "none")
    channels_last = tcfg["channels_last"] is True or (tcfg["channels_last"] == "auto" and device.type == "cuda")
    run_dir = Path(tcfg["out_dir"])

    taxonomy = Taxonomy.load(cfg["taxonomy"])
    train_ds, val_ds = build_datasets(cfg["data"], taxonomy, seed=seed)
    skipped = drop_bad_samples(train_ds) + drop_bad_samples(val_ds)
    if main_process and cfg["data"]["skip_bad"]:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "skipped.json").write_text(json.dumps({"count": len(skipped), "samples": skipped}, indent=2))
        if skipped:
            print(f"hiertree: data.skip_bad: skipping {len(skipped)} bad sample(s), listed in {run_dir / 'skipped.json'}",
                  file=sys.stderr)
    sampler = EpochSampler(len(train_ds), tcfg["batch_size"], seed, rank, world)
    workers = tcfg["num_workers"]
    # the loaders get their own generators: drawing worker seeds from the global RNG would shift
    # the dropout stream by one draw per loader iterator, and a resumed run creates them afresh
    loader_kw = dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                     worker_init_fn=_worker_init if workers > 0 else None)
    if workers > 0:
        loader_kw["prefetch_factor"] = 4
    train_loader = DataLoader(train_ds, batch_size=tcfg["batch_size"], sampler=sampler, drop_last=True,
                              collate_fn=lambda b: pad_collate(b, taxonomy.ignore_index),
                              generator=torch.Generator().manual_seed(seed), **loader_kw)
    val_loader = DataLoader(val_ds, batch_size=cfg["eval"]["batch_size"], sampler=size_ordered(val_ds), num_workers=workers,
                            collate_fn=lambda b: pad_collate(b, taxonomy.ignore_index),
                            worker_init_fn=_worker_init if workers > 0 else None,
                            generator=torch.Generator().manual_seed(seed))

    model = (model if model is not None else build_model(cfg, taxonomy)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = HierarchicalLoss(
        taxonomy, cfg["loss"]["level_weights"], cfg["loss"]["consistency_weight"], cfg["loss"]["tree_min_weight"],
        cfg["loss"]["ce_weight"], cfg["loss"]["label_smoothing"],
    ).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, tcfg["weight_decay"]), lr=tcfg["lr"],
                                  fused=device.type == "cuda")
    steps_per_epoch = sampler.batches_per_epoch
    # the schedule spans train.epochs whatever train.max_steps says: max_steps only stops the run
    # early, so stopping at max_steps and resuming lands on the uninterrupted run's curve
    total_steps = tcfg["epochs"] * steps_per_epoch
    scheduler = _schedule(optimizer, tcfg, max(total_steps, 1))
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")

    step, start_epoch, skip_batches, best, bad_steps = 0, 0, 0, -math.inf, 0
    carried = 0.0  # seconds already spent on a mid-epoch resume's epoch, so its logged time covers all of it
    resume = tcfg["resume"]
    if resume == "auto":
        resume = str(run_dir) if (run_dir / "last" / "train_state.pt").is_file() else None
    if resume:
        ck = load_checkpoint(resume, prefer="last")
        _check_resumable(ck, cfg, taxonomy)
        unwrap(model).load_state_dict(ck["state_dict"])
        state = _load_train_state(ck["dir"] / "train_state.pt")
        optimizer.load_state_dict(state["optimizer"])
        if "lr_lambdas" not in state["scheduler"]:  # torch's OneCycleLR, written before the schedule was one function
            raise TrainingError(
                f"{ck['dir'] / 'train_state.pt'}: its learning-rate schedule was saved by an older hiertree (torch "
                "OneCycleLR) and cannot be continued; start a new run (another train.out_dir) -- its weights still load "
                "with eval.py and load_model"
            )
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, start_epoch, skip_batches, best = state["step"], state["epoch"], state["batch_in_epoch"], state["best"]
        bad_steps = state.get("bad_steps", 0)
        saved_layout = (state.get("batch_size", tcfg["batch_size"]), state.get("world", world),
                        state.get("steps_per_epoch", steps_per_epoch))
        if saved_layout != (tcfg["batch_size"], world, steps_per_epoch) and main_process:
            print(f"hiertree: warning: {ck['dir']} was written with batch size, ranks, steps per epoch {saved_layout}, "
                  f"now {(tcfg['batch_size'], world, steps_per_epoch)}; training goes on but not as the original run would",
                  file=sys.stderr)
        saved_epochs = state.get("epochs", tcfg["epochs"])
        if saved_epochs != tcfg["epochs"] and main_process:
            print(f"hiertree: warning: {ck['dir']} was written by a {saved_epochs}-epoch run, now train.epochs="
                  f"{tcfg['epochs']}; the learning-rate schedule now spans {tcfg['epochs']} epochs and goes on from "
                  f"step {step} on that curve", file=sys.stderr)
        if skip_batches >= steps_per_epoch:
            start_epoch, skip_batches = start_epoch + 1, 0
        carried = float(state.get("epoch_seconds", 0.0)) if skip_batches else 0.0
        _set_rng_state(state["rng"])
        if main_process:
            print(f"hiertree: resumed from {ck['dir']} at epoch {start_epoch}, step {step}")
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    fwd_model = torch.compile(model) if tcfg["compile"] else model

    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        print(taxonomy.describe())
        print(f"hiertree: {len(train_ds)} train / {len(val_ds)} val samples, device {device}, amp {amp}, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {total_steps} steps", flush=True)
    logger = TrainLogger(run_dir, taxonomy, tensorboard="auto", resume=bool(resume)) if main_process else None
    preview: dict | None = None  # a few val images shown in TensorBoard after each evaluation

    def save(tag_epoch: int, batch_in_epoch: int, metrics: dict | None, links: tuple[str, ...]) -> None:
        if not main_process:
            return
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                 "step": step, "epoch": tag_epoch, "batch_in_epoch": batch_in_epoch, "best": best,
                 "bad_steps": bad_steps, "rng": _rng_state(), "batch_size": tcfg["batch_size"], "world": world,
                 "steps_per_epoch": steps_per_epoch, "epochs": tcfg["epochs"],
                 "epoch_seconds": round(time.time() - t0 + carried, 2) if batch_in_epoch else 0.0}
        save_checkpoint(run_dir, f"ckpt-{step:07d}", model, cfg, taxonomy, metrics, state, links,
                        model_card(cfg, taxonomy, metrics, command))

    last_metrics, stopped = None, None
    max_steps = tcfg["max_steps"]
    model.train()
    for epoch in range(start_epoch, tcfg["epochs"]):
        sampler.set_epoch(epoch, skip_batches)
        batch_in_epoch = skip_batches
        skip_batches = 0
        sums: dict[str, float] = {}
        t0, seen, good_steps, stop_now = time.time(), 0, 0, False
        bar = train_loader
        if main_process and tcfg["progress"]:
            from tqdm import tqdm

            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{tcfg['epochs']}", leave=False, dynamic_ncols=True)
        for batch in bar:
            images = batch["image"].to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            masks = batch["mask"].to(device, non_blocking=True)
            with autocast_for(device, amp):
                logits = fwd_model(images, upsample=cfg["loss"]["full_resolution"])
                loss, parts = criterion([z.float() for z in logits], masks)
            bad, stop_now = _agree([not bool(torch.isfinite(loss)), stop.signal is not None], distributed, device)
            if bad:
                bad_steps += 1
                batch_in_epoch += 1
                optimizer.zero_grad(set_to_none=True)
                if bad_steps > tcfg["max_bad_steps"]:
                    where = (run_dir / "last").resolve() if (run_dir / "last").exists() else "none yet"
                    raise TrainingError(
                        f"non-finite loss ({'on another rank' if bool(torch.isfinite(loss)) else loss.item()}) "
                        f"at step {step + 1} (epoch {epoch + 1}, batch {batch_in_epoch}); "
                        f"{bad_steps} bad step(s) > train.max_bad_steps={tcfg['max_bad_steps']}. "
                        f"Last good checkpoint: {where}. Lower train.lr, set train.grad_clip, or check the data; "
                        "resume with train.resume=auto"
                    )
                if main_process:
                    print(f"hiertree: skipped step {step + 1}: non-finite loss ({bad_steps}/{tcfg['max_bad_steps']})",
                          file=sys.stderr)
                if stop_now:
                    break
                continue
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tcfg["grad_clip"]:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            batch_in_epoch += 1
            good_steps += 1
            seen += images.shape[0]
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if bar is not train_loader:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if logger is not None and step % tcfg["log_every"] == 0:
                logger.log_step(step, {"lr": scheduler.get_last_lr()[0], **{f"loss/{k}": float(v.detach()) for k, v in parts.items()}})
            if stop_now or (max_steps and step >= max_steps):
                break
        n = max(good_steps, 1)  # this run's finite steps of this epoch: what ``sums`` holds
        epoch_done = batch_in_epoch >= steps_per_epoch
        hit_max = bool(max_steps and step >= max_steps)
        if distributed:
            _average_buffers(model)
        if stop_now and not epoch_done:
            save(epoch, batch_in_epoch, None, ("last",))
            stopped = f"signal {stop.signal}"
            break
        metrics = None
        final = epoch + 1 == tcfg["epochs"] or hit_max or stop_now
        if main_process and ((epoch + 1) % tcfg["eval_every"] == 0 or final):
            metrics = evaluate(unwrap(model), val_loader, taxonomy, device, amp, cfg["eval"]["hflip"],
                               cfg["eval"]["scales"], cfg["eval"]["max_batches"], flat=cfg["model"]["flat"],
                               channels_last=channels_last, max_side=cfg["eval"]["max_side"],
                               window=cfg["eval"]["window"], overlap=cfg["eval"]["overlap"])
            metrics["epoch"] = epoch + 1
            last_metrics = metrics
            print(f"epoch {epoch + 1}/{tcfg['epochs']}  loss {sums.get('total', 0) / n:.4f}  "
                  f"{seen / (time.time() - t0):.1f} img/s")
            print(format_table(metrics["tree"]))
            print(f"  raw per-head argmax: tree-consistent pixels {metrics['raw']['consistency']:.4f}")
            if logger is not None and logger.writer is not None:
                if preview is None:
                    preview = next(iter(val_loader))
                plain = unwrap(model).eval()
                with torch.no_grad(), autocast_for(device, amp):
                    shown = decode(plain(preview["image"][:4].to(device)), taxonomy, flat=cfg["model"]["flat"])["levels"]
                logger.log_images(epoch + 1, preview["image"][:4], preview["mask"][:4], [p.cpu() for p in shown])
                plain.train()
        links = ("last",)
        if metrics is not None and _score(metrics) > best:
            best = _score(metrics)
            links = ("last", "best")
        if epoch_done:
            save(epoch + 1, 0, metrics, links)
        else:  # stopped by max_steps mid-epoch: resume continues this epoch where it stopped
            save(epoch, batch_in_epoch, metrics, links)
        if main_process:
            row = {"lr": scheduler.get_last_lr()[0], "seconds": round(time.time() - t0 + carried, 2),
                   **{f"loss/{k}": round(v / n, 6) for k, v in sums.items()}}
            if metrics is not None:
                row.update({f"mIoU/L{lv['level']}": round(lv["mIoU"], 6) for lv in metrics["tree"]["levels"]})
            logger.log_epoch(epoch + 1, step, row)
        carried = 0.0
        if stop_now:
            stopped = f"signal {stop.signal}"
            break
        if hit_max:
            break
    if distributed:
        _check_ranks_agree(model, main_process)
    if logger is not None:
        logger.close()
    if main_process and last_metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(last_metrics, indent=2))
    if distributed:  # no rank leaves (and tears the group down) before rank 0 has written everything
        dist.barrier()
    return {"run_dir": run_dir, "best": best, "last_metrics": last_metrics, "steps": step, "stopped": stopped,
            "signal": stop.signal, "model": unwrap(model)}
