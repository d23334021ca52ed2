"""CPU training speed, lever by lever: the real trainer's step timed per phase for each setting, runs alternating.

Each variant is a list of config overrides applied to ``--config`` (default the CPU recipe,
``configs/pascal_part_cpu.yaml``). In every round each variant in turn builds the trainer exactly as
``train.py`` does (data loader with its workers, model, loss, fused AdamW, schedule) and takes ``--warmup``
then ``--steps`` steps through :func:`hiertree.training.engine.profile_steps`, which splits each step's wall time into
``data`` (waiting for the loader), ``forward`` (with the loss), ``backward`` and ``optimizer``. Rounds
alternate the order (forward in odd rounds, backward in even ones) so machine load hits every variant alike;
the figures are medians over every timed step of every round. ``img/s`` is the whole trainer's: batch size
over the median step's total.

    python benchmarks/cpu_train_levers.py --rounds 3 --steps 8
    python benchmarks/cpu_train_levers.py --only baseline channels_last --rounds 1 --steps 2   # a quick look

Writes ``benchmarks/results/cpu-levers-<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import provenance  # noqa: E402
from hiertree.config import apply_overrides, load_config  # noqa: E402
from hiertree.training.engine import profile_steps  # noqa: E402

PHASES = ("data", "forward", "backward", "optimizer")

#: name -> overrides of the base config; each lever alone, then the combinations the short runs compare
VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "decoder_128": ["model.decoder_channels=128"],
    "decoder_96": ["model.decoder_channels=96"],
    "output_stride_32": ["model.output_stride=32"],
    "crop_192": ["data.crop=192"],
    "crop_320": ["data.crop=320"],
    "batch_4": ["train.batch_size=4"],
    "batch_16": ["train.batch_size=16"],
    "channels_last": ["train.channels_last=true"],
    "compile": ["train.compile=true"],
    "frozen_bn": ["train.freeze_encoder_bn=true"],
    "frozen_stem": ["train.frozen_stages=1"],
    "frozen_2_stages": ["train.frozen_stages=2"],
    "loss_at_stride": ["loss.full_resolution=false"],
    "workers_0": ["train.num_workers=0"],
    "workers_1": ["train.num_workers=1"],
    "workers_1_threads_1": ["train.num_workers=1", "train.threads=1"],
    "cl+workers_0": ["train.channels_last=true", "train.num_workers=0"],
    "cl+workers_1": ["train.channels_last=true", "train.num_workers=1"],
    "cl+w0+loss_at_stride": ["train.channels_last=true", "train.num_workers=0", "loss.full_resolution=false"],
    "cl+w0+frozen_bn+2_stages": ["train.channels_last=true", "train.num_workers=0", "train.freeze_encoder_bn=true",
                                 "train.frozen_stages=2"],
    "cl+w0+dec128+loss_at_stride": ["train.channels_last=true", "train.num_workers=0", "model.decoder_channels=128",
                                    "loss.full_resolution=false"],
    "fast": ["train.channels_last=true", "train.num_workers=0", "model.decoder_channels=128",
             "loss.full_resolution=false", "train.freeze_encoder_bn=true", "train.frozen_stages=2"],
}


def measure(cfg: dict, steps: int, warmup: int) -> dict[str, list[float]]:
    """Per-phase seconds of ``steps`` steps of the real trainer (loader workers shut down afterwards)."""
    threads = torch.get_num_threads()  # train.threads sets the process's count: the next variant gets it back
    try:
        result = profile_steps(cfg, steps, warmup)
    finally:
        torch.set_num_threads(threads)
        gc.collect()
    return result["seconds"]


def summarize(name: str, overrides: list[str], batch: int, seconds: dict[str, list[float]]) -> dict:
    totals = [sum(parts) for parts in zip(*(seconds[p] for p in PHASES))]
    step = statistics.median(totals)
    row = {"variant": name, "overrides": overrides, "batch_size": batch, "steps_timed": len(totals),
           "img_per_s": batch / step, "step_ms": 1000 * step,
           **{f"{p}_ms": 1000 * statistics.median(seconds[p]) for p in PHASES},
           "step_ms_min": 1000 * min(totals), "step_ms_max": 1000 * max(totals)}
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# CPU training levers, {meta['date']}", "",
             f"Machine: {meta['provenance']['machine']['cpu']}, {meta['provenance']['machine']['cpu_count']} cores, "
             f"torch {meta['provenance']['versions']['torch']}; commit {meta['provenance']['git']['commit']}"
             f"{' (uncommitted changes)' if meta['provenance']['git']['dirty'] else ''}.",
             f"Command: `{meta['command']}`. Base config `{meta['config']}`; {meta['rounds']} alternating rounds of "
             f"{meta['warmup']} warm-up + {meta['steps']} timed steps per variant; medians over every timed step.", "",
             "| variant | overrides | img/s | × baseline | step ms | data | forward | backward | optimizer |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['variant']} | `{' '.join(r['overrides']) or '-'}` | {r['img_per_s']:.2f} | "
                     f"{r['speedup']:.2f} | {r['step_ms']:.0f} | {r['data_ms']:.0f} | {r['forward_ms']:.0f} | "
                     f"{r['backward_ms']:.0f} | {r['optimizer_ms']:.0f} |")
    lines += ["", "Crop and batch variants change what a step sees (img/s counts images of the variant's crop)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/pascal_part_cpu.yaml")
    parser.add_argument("--data", default=None, help="data.root (default: the config's)")
    parser.add_argument("--only", nargs="*", default=None, help=f"variants to run (default all: {', '.join(VARIANTS)})")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--tag", default=None, help="file name tag (default: the date)")
    parser.add_argument("overrides", nargs="*", help="key=value applied to every variant (e.g. train.device=cpu)")
    args = parser.parse_args(argv)
    names = args.only or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    base = load_config(args.config)
    common = list(args.overrides) + ([f"data.root={args.data}"] if args.data else [])
    common += ["train.progress=false", "train.log_every=1000"]
    seconds: dict[str, dict[str, list[float]]] = {n: {p: [] for p in PHASES} for n in names}
    batch: dict[str, int] = {}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            cfg = apply_overrides(base, common + VARIANTS[name])
            batch[name] = cfg["train"]["batch_size"]
            t0 = time.perf_counter()
            got = measure(cfg, args.steps, args.warmup)
            for p in PHASES:
                seconds[name][p] += got[p]
            print(f"round {r + 1}/{args.rounds} {name}: {batch[name] * len(got['data']) / sum(map(sum, got.values())):.2f} "
                  f"img/s over {len(got['data'])} timed steps, {torch.get_num_threads()} threads "
                  f"({time.perf_counter() - t0:.0f} s with setup)", flush=True)
    rows = [summarize(name, VARIANTS[name], batch[name], seconds[name]) for name in names]
    ref = next((r for r in rows if r["variant"] == "baseline"), rows[0])["img_per_s"]
    for row in rows:
        row["speedup"] = row["img_per_s"] / ref
    now = dt.datetime.now(dt.timezone.utc)
    meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "command": shlex.join([sys.executable, *sys.argv]),
            "config": args.config, "common_overrides": common, "rounds": args.rounds, "steps": args.steps,
            "warmup": args.warmup, "provenance": provenance()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"cpu-levers-{args.tag or now.strftime('%Y%m%d-%H%M')}"
    stem.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows, "seconds": seconds}, indent=1))
    stem.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
