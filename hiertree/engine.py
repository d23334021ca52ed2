"""The training loop, readable top to bottom: data → model → loss → AdamW → evaluate → checkpoint.

Runs on CPU in fp32 and on CUDA with bf16 autocast + channels_last; under ``torchrun`` it trains
with DistributedDataParallel (rank 0 evaluates and writes). Every epoch's data order and every
sample's augmentation derive from (seed, epoch, index), so a resumed run sees exactly what an
uninterrupted one would have.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from hiertree.checkpoint import load_checkpoint, save_checkpoint, unwrap
from hiertree.config import dump_config
from hiertree.data import build_datasets, pad_collate
from hiertree.evaluate import autocast_for, evaluate
from hiertree.losses import HierarchicalLoss
from hiertree.metrics import format_table
from hiertree.models import HierSegModel
from hiertree.taxonomy import Taxonomy

__all__ = ["train", "TrainingError", "EpochSampler", "resolve_device", "build_model", "model_card"]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite losses, mismatched resume); the message says what to do."""


# ---------------------------------------------------------------------- small pieces
class EpochSampler(Sampler[int]):
    """Shuffled indices for one epoch, seeded by (seed, epoch), sharded over ranks, resumable mid-epoch.

    Each yielded value is ``epoch * len(dataset) + index`` so the dataset can seed that sample's
    augmentation from (epoch, index) alone, whatever worker loads it.
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
            yield self.epoch * self.n + i


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device={spec!r} but CUDA is not available here; use device=auto or cpu")
    return device


def build_model(cfg: dict, taxonomy: Taxonomy) -> HierSegModel:
    return HierSegModel.from_config(taxonomy, cfg["model"])


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _schedule(optimizer: torch.optim.Optimizer, tcfg: dict, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    kind, warmup = tcfg["schedule"], min(tcfg["warmup_steps"], max(total_steps - 1, 0))
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=tcfg["lr"], total_steps=total_steps, pct_start=max(warmup / total_steps, 0.01)
        )
    if kind not in ("poly", "constant"):
        raise TrainingError(f"train.schedule must be poly, onecycle or constant, got {kind!r}")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        return max(1.0 - (step - warmup) / max(total_steps - warmup, 1), 0.0) ** tcfg["poly_power"]

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


# ---------------------------------------------------------------------- the loop
def train(cfg: dict, command: str = "") -> dict:
    """Train a model as ``cfg`` says; returns ``{"run_dir", "best", "last_metrics", "steps", "stopped"}``."""
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

    taxonomy = Taxonomy.load(cfg["taxonomy"])
    train_ds, val_ds = build_datasets(cfg["data"], taxonomy, seed=seed)
    sampler = EpochSampler(len(train_ds), tcfg["batch_size"], seed, rank, world)
    workers = tcfg["num_workers"]
    loader_kw = dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    if workers > 0:
        loader_kw["prefetch_factor"] = 4
    train_loader = DataLoader(train_ds, batch_size=tcfg["batch_size"], sampler=sampler, drop_last=True,
                              collate_fn=lambda b: pad_collate(b, taxonomy.ignore_index), **loader_kw)
    val_loader = DataLoader(val_ds, batch_size=cfg["eval"]["batch_size"], shuffle=False, num_workers=workers,
                            collate_fn=lambda b: pad_collate(b, taxonomy.ignore_index))

    model = build_model(cfg, taxonomy).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = HierarchicalLoss(
        taxonomy, cfg["loss"]["level_weights"], cfg["loss"]["consistency_weight"], cfg["loss"]["tree_min_weight"],
        cfg["loss"]["ce_weight"], cfg["loss"]["label_smoothing"],
    ).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, tcfg["weight_decay"]), lr=tcfg["lr"],
                                  fused=device.type == "cuda")
    steps_per_epoch = sampler.batches_per_epoch
    total_steps = tcfg["epochs"] * steps_per_epoch
    if tcfg["max_steps"]:
        total_steps = min(total_steps, tcfg["max_steps"])
    scheduler = _schedule(optimizer, tcfg, max(total_steps, 1))
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")

    run_dir = Path(tcfg["out_dir"])
    step, start_epoch, skip_batches, best, bad_steps = 0, 0, 0, -math.inf, 0
    resume = tcfg["resume"]
    if resume == "auto":
        resume = str(run_dir) if (run_dir / "last" / "train_state.pt").is_file() else None
    if resume:
        ck = load_checkpoint(resume, prefer="last")
        if ck["taxonomy"] != taxonomy:
            raise TrainingError(f"cannot resume from {ck['dir']}: its taxonomy differs from this config's ({cfg['taxonomy']})")
        if ck["config"]["model"] != cfg["model"]:
            raise TrainingError(f"cannot resume from {ck['dir']}: its model config {ck['config']['model']} differs from {cfg['model']}")
        unwrap(model).load_state_dict(ck["state_dict"])
        state = torch.load(ck["dir"] / "train_state.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, start_epoch, skip_batches, best = state["step"], state["epoch"], state["batch_in_epoch"], state["best"]
        bad_steps = state.get("bad_steps", 0)
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
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {total_steps} steps")
    log_path = run_dir / "log.csv"

    def save(tag_epoch: int, batch_in_epoch: int, metrics: dict | None, links: tuple[str, ...]) -> None:
        if not main_process:
            return
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                 "step": step, "epoch": tag_epoch, "batch_in_epoch": batch_in_epoch, "best": best,
                 "bad_steps": bad_steps, "rng": _rng_state()}
        save_checkpoint(run_dir, f"ckpt-{step:07d}", model, cfg, taxonomy, metrics, state, links,
                        model_card(cfg, taxonomy, metrics, command))

    last_metrics, stopped = None, None
    model.train()
    with _StopFlag() as stop:
        for epoch in range(start_epoch, tcfg["epochs"]):
            sampler.set_epoch(epoch, skip_batches)
            batch_in_epoch = skip_batches
            skip_batches = 0
            sums: dict[str, float] = {}
            t0, seen = time.time(), 0
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
                if not torch.isfinite(loss):
                    bad_steps += 1
                    batch_in_epoch += 1
                    optimizer.zero_grad(set_to_none=True)
                    if bad_steps > tcfg["max_bad_steps"]:
                        where = (run_dir / "last").resolve() if (run_dir / "last").exists() else "none yet"
                        raise TrainingError(
                            f"non-finite loss ({loss.item()}) at step {step + 1} (epoch {epoch + 1}); "
                            f"{bad_steps} bad step(s) > train.max_bad_steps={tcfg['max_bad_steps']}. "
                            f"Last good checkpoint: {where}. Lower train.lr, set train.grad_clip, or check the data"
                        )
                    print(f"hiertree: skipped step {step + 1}: non-finite loss ({bad_steps}/{tcfg['max_bad_steps']})", file=sys.stderr)
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
                seen += images.shape[0]
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                if bar is not train_loader:
                    bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                if stop.signal is not None or (tcfg["max_steps"] and step >= tcfg["max_steps"]):
                    break
            n = max(batch_in_epoch, 1)
            epoch_done = batch_in_epoch >= steps_per_epoch
            if stop.signal is not None and not epoch_done:
                save(epoch, batch_in_epoch, None, ("last",))
                stopped = f"signal {stop.signal}"
                break
            metrics = None
            final = epoch + 1 == tcfg["epochs"] or (tcfg["max_steps"] and step >= tcfg["max_steps"]) or stop.signal is not None
            if main_process and ((epoch + 1) % tcfg["eval_every"] == 0 or final):
                metrics = evaluate(unwrap(model), val_loader, taxonomy, device, amp, cfg["eval"]["hflip"],
                                   cfg["eval"]["scales"], cfg["eval"]["max_batches"], flat=cfg["model"]["flat"],
                                   channels_last=channels_last)
                metrics["epoch"] = epoch + 1
                last_metrics = metrics
                print(f"epoch {epoch + 1}/{tcfg['epochs']}  loss {sums.get('total', 0) / n:.4f}  "
                      f"{seen / (time.time() - t0):.1f} img/s")
                print(format_table(metrics["tree"]))
                print(f"  raw per-head argmax: tree-consistent pixels {metrics['raw']['consistency']:.4f}")
            links = ("last",)
            if metrics is not None and _score(metrics) > best:
                best = _score(metrics)
                links = ("last", "best")
            save(epoch + 1, 0, metrics, links)
            if main_process:
                row = {"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0], "seconds": round(time.time() - t0, 2),
                       **{f"loss/{k}": round(v / n, 6) for k, v in sums.items()}}
                if metrics is not None:
                    row.update({f"mIoU/L{lv['level']}": round(lv["mIoU"], 6) for lv in metrics["tree"]["levels"]})
                new = not log_path.exists()
                with open(log_path, "a", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=list(row))
                    if new:
                        writer.writeheader()
                    writer.writerow(row)
            if stop.signal is not None:
                stopped = f"signal {stop.signal}"
                break
            if tcfg["max_steps"] and step >= tcfg["max_steps"]:
                break
    if distributed:
        dist.barrier()
    if main_process and last_metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(last_metrics, indent=2))
    return {"run_dir": run_dir, "best": best, "last_metrics": last_metrics, "steps": step, "stopped": stopped}
