"""Speed benchmark: hiertree vs the flat smp DeepLabV3+ baseline, side by side in one run.

Measures, per model: training throughput end to end (real data loader) and model only (tensors
already on the device), data-pipeline throughput, peak GPU memory, and CPU inference latency for
one 512² image. Writes ``benchmarks/results/speed-<tag>-<device>.json`` and prints ratios.

Fair by construction: both models start from one seed and see the same batches; hiertree steps as its
trainer does (every head, the config's hierarchical loss), smp as a plain smp user does (the network,
one leaf cross-entropy: no coarse levels, no hierarchy terms); end-to-end timing starts only after the
loader's prefetch queue has been consumed; CPU latencies alternate the models within each repeat
(hiertree as ``eval.py``/``hiertree-predict`` load it, with channels_last weights; smp as built, and with channels_last
weights for reference).
The JSON records versions, git commit, CPU/GPU, seed and the exact command.

    python benchmarks/speed.py --data /root/d/datasets/pascal-part          # GPU numbers
    python benchmarks/speed.py --smoke                                     # synthetic data, CPU check
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.baselines import SmpFlatDeepLabV3Plus  # noqa: E402
from benchmarks.provenance import provenance  # noqa: E402
from hiertree.config import apply_overrides, load_config  # noqa: E402
from hiertree.device import autocast_for, resolve_amp  # noqa: E402
from hiertree.data import EpochSampler, build_datasets, pad_collate  # noqa: E402
from hiertree.losses import HierarchicalLoss  # noqa: E402
from hiertree.models import HierSegModel  # noqa: E402
from hiertree.tree.taxonomy import Taxonomy  # noqa: E402


SEED = 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_models(cfg: dict, taxonomy: Taxonomy) -> dict[str, torch.nn.Module]:
    """Both models from the same seed (random init: speed does not depend on the weights)."""
    mc = cfg["model"]
    torch.manual_seed(SEED)
    hiertree = HierSegModel.from_config(taxonomy, {**mc, "encoder_weights": None})
    torch.manual_seed(SEED)
    smp = SmpFlatDeepLabV3Plus(taxonomy, mc["encoder"], None, mc["output_stride"])
    return {"hiertree": hiertree, "smp": smp}


def hiertree_step(model, cfg: dict, taxonomy: Taxonomy, optimizer, device, amp):
    """One optimizer step exactly as hiertree's trainer takes it: every head, the configured loss."""
    lc = cfg["loss"]
    criterion = HierarchicalLoss(taxonomy, **lc).to(device)

    def step(images, masks):
        with autocast_for(device, amp):
            logits = model(images, upsample=lc["full_resolution"])
            loss, _ = criterion([z.float() for z in logits], masks, partial=False)  # leaf masks, as the trainer knows
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def smp_step(model: SmpFlatDeepLabV3Plus, optimizer, device, amp, ignore_index: int):
    """One optimizer step as a plain smp user takes it: the flat network and one leaf cross-entropy."""

    def step(images, masks):
        with autocast_for(device, amp):
            loss = F.cross_entropy(model.leaf_logits(images).float(), masks, ignore_index=ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def time_steps(step, batches, device, warmup: int, steps: int) -> float:
    """Images per second over ``steps`` steps after ``warmup`` steps."""
    it = iter(batches)
    for _ in range(warmup):
        step(*next(it))
    _sync(device)
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        images, masks = next(it)
        step(images, masks)
        n += images.shape[0]
    _sync(device)
    return n / (time.perf_counter() - t0)


def _loader(cfg: dict, taxonomy: Taxonomy, train_ds, device: torch.device):
    """Endless (images, masks) batches from the real loader, as the trainer feeds them."""
    bs, workers = cfg["train"]["batch_size"], cfg["train"]["num_workers"]
    prefetch = 4 if workers else None
    sampler = EpochSampler(len(train_ds), bs, SEED)
    channels_last = cfg["train"]["channels_last"] is True or (cfg["train"]["channels_last"] == "auto" and device.type == "cuda")
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        dl = DataLoader(train_ds, batch_size=bs, sampler=sampler, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=False, prefetch_factor=prefetch,
                        collate_fn=lambda b: pad_collate(b, taxonomy.ignore_index))
        for batch in dl:
            images = batch["image"].to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, batch["mask"].to(device, non_blocking=True)
        epoch += 1


def _queued(cfg: dict) -> int:
    """Batches the loader may hold ready before timing starts: skipped, so a full queue is not counted as speed."""
    return cfg["train"]["num_workers"] * 4


def _data_pipeline(cfg: dict, taxonomy: Taxonomy, train_ds, device: torch.device, args) -> float:
    gen = _loader(cfg, taxonomy, train_ds, device)
    for _ in range(args.warmup + _queued(cfg)):
        next(gen)
    t0, n = time.perf_counter(), 0
    for _ in range(args.steps):
        images, _ = next(gen)
        n += images.shape[0]
    return n / (time.perf_counter() - t0)


def _train_figures(name: str, model: torch.nn.Module, cfg: dict, taxonomy: Taxonomy, train_ds,
                   device: torch.device, amp: str, args) -> dict:
    """Model-only and end-to-end training img/s (and peak GPU memory) of one model under ``cfg``."""
    bs, crop = cfg["train"]["batch_size"], cfg["data"]["crop"]
    channels_last = cfg["train"]["channels_last"] is True or (cfg["train"]["channels_last"] == "auto" and device.type == "cuda")
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if cfg["train"]["compile"] else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))
    if name == "hiertree":
        step = hiertree_step(fwd, cfg, taxonomy, opt, device, amp)
    else:
        if cfg["train"]["compile"]:  # like for like: smp's network is compiled too
            model.net = torch.compile(model.net)
        step = smp_step(model, opt, device, amp, taxonomy.ignore_index)
    model.train()
    torch.manual_seed(SEED)
    images = torch.randint(0, 256, (bs, 3, crop, crop), dtype=torch.uint8, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    masks = torch.randint(0, taxonomy.num_leaves, (bs, crop, crop), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def fixed():
        while True:
            yield images, masks

    model_only = time_steps(step, fixed(), device, args.warmup, args.steps)
    end_to_end = time_steps(step, _loader(cfg, taxonomy, train_ds, device), device, args.warmup + _queued(cfg), args.steps)
    row = {"train_img_s_model_only": round(model_only, 2), "train_img_s_end_to_end": round(end_to_end, 2),
           "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
           "step": "model(images) -> every head, the config's hierarchical loss" if name == "hiertree"
           else "net(normalised images) -> one leaf cross-entropy (ignore_index), as an smp user trains"}
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    model.to("cpu")
    return row


#: hiertree's speed levers, each switched against the config as given (``--levers``); plus 4x the batch size
LEVERS = {
    "compile": ["train.compile=true"],
    "no_channels_last": ["train.channels_last=false"],
    "loss_at_decoder_stride": ["loss.full_resolution=false"],
}


def bench(args) -> dict:
    cfg = load_config(args.config, args.overrides)
    taxonomy = Taxonomy.load(cfg["taxonomy"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = resolve_amp("auto", device)
    results: dict[str, dict] = {name: {} for name in ("hiertree", "smp")}
    if args.cpu_infer_only:
        return _cpu_inference(cfg, taxonomy, args, results, None)
    train_ds, _ = build_datasets(cfg["data"], taxonomy, seed=SEED)
    data_ips = _data_pipeline(cfg, taxonomy, train_ds, device, args)
    if args.data_only:
        return {"config": cfg, "batch_size": cfg["train"]["batch_size"], "crop": cfg["data"]["crop"], "steps": args.steps,
                "data_pipeline_img_s": round(data_ips, 1), "models": {}, "ratios": {},
                "data_pipeline_img_s_per_worker": round(data_ips / max(cfg["train"]["num_workers"], 1), 1)}
    for name, model in make_models(cfg, taxonomy).items():
        results[name] = _train_figures(name, model, cfg, taxonomy, train_ds, device, amp, args)
    if args.levers:
        results["hiertree_levers"] = {}
        bs = cfg["train"]["batch_size"]
        skip = {x for x in args.skip_levers.split(",") if x}
        for lever, overrides in {f"batch_{4 * bs}": [f"train.batch_size={4 * bs}"], **LEVERS}.items():
            if lever in skip:
                continue
            lcfg = apply_overrides(cfg, overrides)
            model = make_models(lcfg, taxonomy)["hiertree"]
            results["hiertree_levers"][lever] = {"overrides": overrides, **_train_figures(
                "hiertree", model, lcfg, taxonomy, train_ds, device, amp, args)}
    if args.profile:
        results["hiertree_profile"] = _profile(cfg, taxonomy, device, amp, args)
    report = _cpu_inference(cfg, taxonomy, args, results, data_ips)
    report["data_pipeline_img_s_per_worker"] = round(data_ips / max(cfg["train"]["num_workers"], 1), 1)
    return report


def _profile(cfg: dict, taxonomy: Taxonomy, device: torch.device, amp: str, args) -> list[dict]:
    """Top kernels (self device time, else self CPU time) of a few hiertree steps on fixed tensors."""
    from torch.profiler import ProfilerActivity, profile

    model = make_models(cfg, taxonomy)["hiertree"].to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))
    step = hiertree_step(model, cfg, taxonomy, opt, device, amp)
    bs, crop = cfg["train"]["batch_size"], cfg["data"]["crop"]
    images = torch.randint(0, 256, (bs, 3, crop, crop), dtype=torch.uint8, device=device)
    masks = torch.randint(0, taxonomy.num_leaves, (bs, crop, crop), device=device)
    for _ in range(2):
        step(images, masks)
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step(images, masks)
        _sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr) > 0]
    total = sum(getattr(e, attr) for e in events) or 1
    top = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:args.profile_top]
    model.to("cpu")
    return [{"name": e.key, "share": round(getattr(e, attr) / total, 4), "ms_per_step": round(getattr(e, attr) / 3e3, 3),
             "calls_per_step": e.count // 3} for e in top]


def _ratio(a: float, b: float) -> float | None:
    """a / b to 3 significant digits (None when b rounded to 0)."""
    return float(f"{a / b:.3g}") if b else None


def _cpu_inference(cfg: dict, taxonomy: Taxonomy, args, results: dict, data_ips: float | None) -> dict:
    """CPU latency of one image (the machine's threads: 2 on the dev/CI machines), median of repeats.

    hiertree: per-level logits of the model as ``eval.py``/``hiertree-predict`` load it (channels_last
    weights); smp: the network's leaf logits as smp builds it, and, for reference, with channels_last weights
    too. All runs alternate within every repeat (order reversed every other time), so load hits them alike.
    """
    models = {name: m.eval() for name, m in make_models(cfg, taxonomy).items()}
    hier = models["hiertree"].to(memory_format=torch.channels_last)
    smp_cl = copy.deepcopy(models["smp"]).to(memory_format=torch.channels_last)
    run = {"hiertree": lambda x: hier(x), "smp": lambda x: models["smp"].leaf_logits(x),
           "smp_channels_last": lambda x: smp_cl.leaf_logits(x)}
    x = torch.randint(0, 256, (1, 3, args.infer_size, args.infer_size), dtype=torch.uint8)
    times: dict[str, list[float]] = {name: [] for name in run}
    with torch.inference_mode():
        for i in range(args.infer_repeats + 2):
            for name in (list(run) if i % 2 == 0 else list(run)[::-1]):
                t0 = time.perf_counter()
                run[name](x)
                if i >= 2:
                    times[name].append(time.perf_counter() - t0)
    for name, t in times.items():
        row = results["smp"] if name == "smp_channels_last" else results[name]
        key = "cpu_infer_ms_median_channels_last" if name == "smp_channels_last" else "cpu_infer_ms_median"
        row[key] = round(1000 * statistics.median(t), 1)
        row[key.replace("median", "spread")] = [round(1000 * min(t), 1), round(1000 * max(t), 1)]
    h, b = results["hiertree"], results["smp"]
    ratios = {"cpu_infer_speedup_x": _ratio(b["cpu_infer_ms_median"], h["cpu_infer_ms_median"]),
              "cpu_infer_speedup_vs_smp_channels_last_x": _ratio(b["cpu_infer_ms_median_channels_last"], h["cpu_infer_ms_median"])}
    if "train_img_s_end_to_end" in h:
        ratios["train_end_to_end_x"] = _ratio(h["train_img_s_end_to_end"], b["train_img_s_end_to_end"])
        ratios["train_model_only_x"] = _ratio(h["train_img_s_model_only"], b["train_img_s_model_only"])
    return {"config": cfg, "batch_size": cfg["train"]["batch_size"], "crop": cfg["data"]["crop"], "seed": SEED,
            "steps": args.steps, "warmup": args.warmup, "infer_size": args.infer_size, "threads": torch.get_num_threads(),
            "data_pipeline_img_s": None if data_ips is None else round(data_ips, 1), "models": results, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "pascal_part.yaml"))
    parser.add_argument("--data", help="dataset folder; default: the config's")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (end to end adds the loader queue)")
    parser.add_argument("--infer-size", type=int, default=512)
    parser.add_argument("--infer-repeats", type=int, default=10)
    parser.add_argument("--cpu-infer-only", action="store_true", help="only the CPU inference latency (no training, no data)")
    parser.add_argument("--smoke", action="store_true", help="synthetic data, tiny sizes: checks the script only")
    parser.add_argument("--levers", action="store_true", help="also time hiertree with each speed lever switched ("
                        + ", ".join(["4x batch", *LEVERS]) + ")")
    parser.add_argument("--data-only", action="store_true", help="only the data pipeline's img/s (no models)")
    parser.add_argument("--skip-levers", default="", help="comma-separated levers to leave out (e.g. compile)")
    parser.add_argument("--profile", action="store_true", help="also profile a hiertree step: top kernels and their share")
    parser.add_argument("--profile-top", type=int, default=15)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    if args.data:
        args.overrides = [f"data.root={args.data}"] + args.overrides
    if args.smoke:
        args.config = str(ROOT / "configs" / "demo.yaml")
        args.overrides = ["data.crop=64", "data.synthetic.size=64", "train.batch_size=2", "train.num_workers=0",
                          "model.decoder_channels=16"] + args.overrides
        args.steps, args.warmup, args.infer_size, args.infer_repeats = 2, 1, 64, 2
    report = bench(args)
    now = dt.datetime.now(dt.timezone.utc)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    report.update({"date": now.isoformat(timespec="seconds"), "torch": torch.__version__,
                   "device": torch.cuda.get_device_name(0) if dev == "cuda" else f"CPU {platform.machine()}, {torch.get_num_threads()} threads",
                   "command": shlex.join(["python", "benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])]),
                   **provenance()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kind = "cpu-infer" if args.cpu_infer_only else "speed"
    path = out / f"{kind}-{'smoke' if args.smoke else now.strftime('%Y%m%d-%H%M')}-{dev}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: report[k] for k in ("device", "data_pipeline_img_s", "models", "ratios")}, indent=2, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
