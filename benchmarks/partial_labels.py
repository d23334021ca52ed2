"""Does training on coarse labels pay? Runs issue 11's comparisons through data.sources and label maps.

``--suite synthetic`` (the embedded figures, configs/demo.yaml, CPU-sized):
  (a) 10 % of the training images with leaf labels only;
  (b) the same 10 % plus the other 90 %, half labelled only at L0 (person) and half only at L1 (upper/lower);
  (c) all 100 % with leaf labels.
``--suite pascal`` (real Pascal-Part, CPU-scale: images resized to a longest side of 256, 160² crops):
  (i) 20 % of the training images with parts;
  (ii) the same 20 % plus the other 80 % relabelled as ``body`` only (their person masks, through a label map);
  (iii) the control: all 100 % with parts, sampled as in (ii).
Every arm of a suite takes the same number of optimizer steps and is scored on the same leaf-labelled val split.
Results (per-level mIoU, steps, wall time, the machine, the command) go to benchmarks/results/partial-<suite>.{json,md}.

    python benchmarks/partial_labels.py --suite synthetic
    python benchmarks/partial_labels.py --suite pascal --data ../shared/datasets/pascal-part
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import cpu_model  # noqa: E402
from hiertree.config import load_config  # noqa: E402
from hiertree.training.engine import train  # noqa: E402
from hiertree.logs import setup_logging  # noqa: E402

TO_L0 = {0: "background", **{i: "body" for i in range(1, 7)}}  # pascal_part leaf ids -> body
TO_L1 = {0: "background", 1: "upper_body", 2: "upper_body", 4: "upper_body", 6: "upper_body", 3: "lower_body",
         5: "lower_body"}


def _synthetic_arms(base: dict, leaf_share: float | None, n_leaf: int = 150,
                    leaf_share_start: float | None = None, l1_share: float = 0.5) -> dict[str, tuple[dict, int]]:
    """(config, epochs) per arm; A = ``n_leaf`` leaf-labelled images, B1/B2 = 4.5 x ``n_leaf`` each (seeds 10, 20).

    In (b) the leaf-labelled source fills ``leaf_share`` of the batches and the two coarse ones the rest, the
    L1-labelled one ``l1_share`` of it (``None``: every source in proportion to its size, so A fills 10 %); with ``leaf_share_start`` that
    share moves linearly from it at the first step to ``leaf_share`` at the last; in (c), where every source has leaf
    labels, sources are sampled in proportion to their size. Every arm takes about 561 steps of batch 8.
    """
    def src(name: str, n: int, seed: int, labels: dict | None, evaluate: bool, weight: float | None = None,
            start: float | None = None) -> dict:
        return {"name": name, "labels": labels, "evaluate": evaluate, "weight": float(weight or n),
                "weight_start": start, "synthetic": {"num_train": n, "seed": seed, "num_val": 150}}

    n_b = n_leaf * 9 // 2
    batch = int(base["train"]["batch_size"])
    epochs_a = max(1, round(561 / max(1, n_leaf // batch)))  # 150 images: 18 steps per epoch, 31 epochs
    epochs_bc = max(1, round(561 / max(1, (n_leaf + 2 * n_b) // batch)))
    a = src("leaf10", n_leaf, 0, None, True)
    def coarse(share: float | None, part: float) -> float | None:
        return None if share is None else (1 - share) * part

    start = None if leaf_share is None else leaf_share_start
    b = [src("leaf10", n_leaf, 0, None, True, leaf_share, start),
         src("to_L0", n_b, 10, TO_L0, False, coarse(leaf_share, 1 - l1_share), coarse(start, 1 - l1_share)),
         src("to_L1", n_b, 20, TO_L1, False, coarse(leaf_share, l1_share), coarse(start, l1_share))]
    arms = {
        "a_leaf10": ([a], epochs_a),
        "b_leaf10_coarse90": (b, epochs_bc),
        "c_leaf100": ([a, src("leaf_b1", n_b, 10, None, False), src("leaf_b2", n_b, 20, None, False)], epochs_bc),
    }
    return {name: (_with(base, sources, epochs), epochs) for name, (sources, epochs) in arms.items()}


def _with(base: dict, sources: list, epochs: int, **train: object) -> dict:
    cfg = copy.deepcopy(base)
    full = load_config(None, [f"data.sources={json.dumps(sources)}"])["data"]["sources"]
    cfg["data"]["sources"] = full
    cfg["train"].update(epochs=epochs, eval_every=epochs, progress=False, **train)
    return cfg


def _pascal_lists(data: Path, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Split the train ids 20 / 80 at random (seeded) into two id lists under ``out``."""
    ids = [line.strip() for line in (data / "train_id.txt").read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(ids)
    cut = len(ids) // 5
    out.mkdir(parents=True, exist_ok=True)
    parts, rest = out / "train_parts20.txt", out / "train_body80.txt"
    parts.write_text("\n".join(sorted(ids[:cut])) + "\n")
    rest.write_text("\n".join(sorted(ids[cut:])) + "\n")
    return parts, rest


def _pascal_arms(base: dict, data: Path, out: Path, share: float = 0.5,
                 share_start: float | None = None) -> dict[str, tuple[dict, int]]:
    """(ii) and (iii) draw ``share`` of the batches from the 20 % with parts (from ``share_start`` at the first step)."""
    parts, rest = _pascal_lists(data, out / "lists")
    root = str(data)
    start = {} if share_start is None else {"weight_start": share_start}
    rest_start = {} if share_start is None else {"weight_start": 1 - share_start}
    p20 = {"name": "parts20", "kind": "folder", "root": root, "train_split": str(parts), "val_split": "val",
           "weight": share, **start}
    b80 = {"name": "body80", "kind": "folder", "root": root, "train_split": str(rest), "labels": TO_L0,
           "evaluate": False, "weight": 1 - share, **rest_start}
    n20 = len(parts.read_text().split())
    steps = 352  # arm (ii): 2826 images / batch 8 = 353 steps, one epoch
    epochs_i = max(round(steps / (n20 // 8)), 1)
    a80 = {**b80, "name": "parts80", "labels": None}
    alone = {k: v for k, v in p20.items() if k not in ("weight", "weight_start")}
    return {"i_parts20": (_with(base, [alone], epochs_i), epochs_i),
            "ii_parts20_body80": (_with(base, [p20, b80], 1), 1),
            "iii_parts100": (_with(base, [p20, a80], 1), 1)}


def _machine() -> str:
    return f"{cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _run_arm(name: str, cfg: dict, out: Path) -> dict:
    cfg["train"]["out_dir"] = str(out / name)
    start = time.time()
    result = train(cfg, command=f"benchmarks/partial_labels.py arm {name}")
    seconds = time.time() - start
    levels = result["last_metrics"]["tree"]["levels"]
    return {"arm": name, "steps": result["steps"], "seconds": round(seconds, 1),
            "mIoU": [round(lv["mIoU"], 4) for lv in levels], "pixel_accuracy": [round(lv["pixel_accuracy"], 4) for lv in levels],
            "consistency_raw": round(result["last_metrics"]["raw"]["consistency"], 4),
            "sources": [{k: s[k] for k in ("name", "weight", "labels", "train_split") if k in s}
                        for s in cfg["data"]["sources"]]}


def _verdict(rows: list[dict], suite: str) -> list[str]:
    by = {r["arm"][0] if suite == "synthetic" else r["arm"].split("_")[0]: r["mIoU"] for r in rows}
    if not ({"a", "b", "c"} <= set(by) or {"i", "ii"} <= set(by)):
        return [f"no verdict: it compares arms a, b, c (synthetic) or i, ii (pascal); this file holds {sorted(by)}"]
    if suite == "synthetic":
        a, b, c = by["a"], by["b"], by["c"]
        gap = [(bv - av) / (cv - av) if cv != av else float("nan") for av, bv, cv in zip(a, b, c)]
        return [f"(b) beats (a) at every level: {all(bv > av for av, bv in zip(a, b))} "
                f"({', '.join(f'L{l} {bv - av:+.4f}' for l, (av, bv) in enumerate(zip(a, b)))})",
                f"(b) within 0.01 of (c) at L0 and L1: {all(abs(b[l] - c[l]) <= 0.01 or b[l] > c[l] for l in (0, 1))} "
                f"(L0 {b[0] - c[0]:+.4f}, L1 {b[1] - c[1]:+.4f})",
                f"(b) closes at least half of the (a)->(c) gap at L2: {gap[2] >= 0.5} ({100 * gap[2]:.0f} % closed)"]
    i, ii = by["i"], by["ii"]
    out = ["(ii) - (i): " + ", ".join(f"L{l} {y - x:+.4f}" for l, (x, y) in enumerate(zip(i, ii)))]
    if "iii" in by:
        out.append("(iii) - (i): " + ", ".join(f"L{l} {y - x:+.4f}" for l, (x, y) in enumerate(zip(i, by["iii"]))))
    return out


def _merged(path: Path, rows: list[dict], command: str) -> tuple[list[dict], list[str]]:
    """With ``--arms``: the arms already in the results file, those run now replacing their namesakes."""
    if not path.is_file():
        return rows, [command]
    old = json.loads(path.read_text())
    if "arms" not in old:
        raise SystemExit(f"{path} holds no 'arms' list to merge into (a summary written by hand); give --tag")
    fresh = {r["arm"] for r in rows}
    kept = [r for r in old["arms"] if r["arm"] not in fresh]
    commands = old.get("commands", [old.get("command", "")])
    return kept + rows, [*commands, command]


def _write(suite: str, rows: list[dict], command: str, extra: str, merge: bool, tag: str = "") -> Path:
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"partial-{suite}{'-' + tag if tag else ''}"
    commands = [command]
    if merge:
        rows, commands = _merged(out / f"{stem}.json", rows, command)
    order = {"a": 0, "b": 1, "c": 2, "i": 0, "ii": 1, "iii": 2}
    rows = sorted(rows, key=lambda r: order.get(r["arm"].split("_")[0], 9))
    command = " && ".join(commands)
    info = {"suite": suite, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": _commit(), "machine": _machine(), "command": command, "commands": commands, "setup": extra,
            "arms": rows, "verdict": _verdict(rows, suite)}
    (out / f"{stem}.json").write_text(json.dumps(info, indent=2))
    lines = [f"# Coarse and partial labels: {suite}", "", f"{info['date']}, commit {info['commit']}, {info['machine']}.",
             "", f"Command: `{command}`", "", extra, "",
             "| arm | steps | L0 mIoU | L1 mIoU | L2 mIoU | raw consistency | wall s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['steps']} | {r['mIoU'][0]:.4f} | {r['mIoU'][1]:.4f} | {r['mIoU'][2]:.4f} | "
                     f"{r['consistency_raw']:.4f} | {r['seconds']:.0f} |")
    lines += ["", *[f"- {v}" for v in info["verdict"]], ""]
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines))
    return path


def _share(text: str) -> float | None:
    if text == "size":
        return None
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"--leaf-share must be in (0, 1) or 'size', got {text}")
    return value


def _unit(flag: str):
    """An argparse type: a float in [0, 1], refused naming ``flag``."""
    def parse(text: str) -> float:
        value = float(text)
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"{flag} must be in [0, 1], got {text}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("synthetic", "pascal"), required=True)
    parser.add_argument("--data", default="../shared/datasets/pascal-part", help="Pascal-Part folder (--suite pascal)")
    parser.add_argument("--out", default="runs/partial", help="run folders")
    parser.add_argument("--arms", nargs="*", help="run only these arms (names as in the results)")
    parser.add_argument("--leaf-share", type=_share, default=0.5,
                        help="synthetic (b) / pascal (ii): share of the batches from the leaf-labelled source (at "
                             "the last step with --leaf-share-start); 0.5 was tuned at a constant share with 150 "
                             "leaf images (the README's headline command: partial-synthetic-schedule.md); 'size' "
                             "samples by source size")
    parser.add_argument("--leaf-share-start", type=_unit("--leaf-share-start"), default=None,
                        help="synthetic (b) / pascal (ii): the leaf source's share at the first step, moving "
                             "linearly to --leaf-share at the last (weight_start); default: a constant share")
    parser.add_argument("--l1-share", type=_unit("--l1-share"), default=0.5,
                        help="synthetic (b): share of the coarse batches from the L1-labelled source (the rest: L0)")
    parser.add_argument("--leaf-images", type=int, default=150,
                        help="synthetic: size of A, the leaf-labelled 10 %% (B = 9 x as many); steps stay about 561")
    parser.add_argument("--tag", default="", help="results go to partial-<suite>-<tag>.{json,md}")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every arm")
    args = parser.parse_args(argv)
    setup_logging(-1)
    out = Path(args.out) / args.suite
    if args.suite == "synthetic":
        base = load_config(ROOT / "configs/demo.yaml", args.overrides)
        if args.leaf_share_start is not None and args.leaf_share is None:
            parser.error("--leaf-share-start needs a numeric --leaf-share (the share at the last step)")
        arms = _synthetic_arms(base, args.leaf_share, args.leaf_images, args.leaf_share_start, args.l1_share)
        extra = (f"configs/demo.yaml; A = {args.leaf_images} leaf-labelled images (seed 0), B = 2 x {args.leaf_images * 9 // 2} images (seeds 10, 20) labelled "
                 f"at L0 / L1 in (b) and at the leaves in (c); in (b) A fills "
                 f"{'10 % (by size)' if args.leaf_share is None else format(args.leaf_share, '.0%')} of the batches"
                 f"{'' if args.leaf_share_start is None else f' (from {args.leaf_share_start:.0%} at the first step, linearly)'}, "
                 f"the coarse sources the rest ({args.l1_share:.0%} of it the L1-labelled one); in (c) sources are sampled by size; val = 150 leaf-labelled images "
                 "(seed 1).")
    else:
        base = load_config(ROOT / "configs/pascal_part_cpu.yaml",
                           ["data.longest=256", "data.crop=160", "train.warmup_steps=50", *args.overrides])
        base["data"]["root"] = args.data
        share = 0.5 if args.leaf_share is None else args.leaf_share
        arms = _pascal_arms(base, Path(args.data), out, share, args.leaf_share_start)
        extra = ("configs/pascal_part_cpu.yaml with data.longest=256 (train and val resized), data.crop=160, warmup 50; "
                 "(i) 565 train images with parts; (ii) those plus the other 2261 train images labelled body only "
                 f"(label map 1..6 -> body), the parts images filling {share:.0%} of the batches"
                 f"{'' if args.leaf_share_start is None else f' (from {args.leaf_share_start:.0%} at the first step, linearly)'}"
                 "; (iii) the same with the parts labels of those 2261 kept; val = the 410 val images with parts, resized.")
    rows = []
    for name, (cfg, _) in arms.items():
        if args.arms and name not in args.arms:
            continue
        rows.append(_run_arm(name, cfg, out))
        print(json.dumps(rows[-1]), flush=True)
    command = " ".join(["python benchmarks/partial_labels.py"] + [shlex.quote(a) for a in (argv or sys.argv[1:])])
    print(f"wrote {_write(args.suite, rows, command, extra, merge=bool(args.arms), tag=args.tag)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
