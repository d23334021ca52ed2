#!/usr/bin/env bash
# One GPU lease for the Pascal-Part recipe (issue 13): train, evaluate, publish fp16, bring the files back.
#
# Prepare here first: `bash benchmarks/gpu/prepare.sh` (wheels into .whl/, converted ImageNet weights into
# .gpu/weights/, the data into .gpu/all/part-{1,2,3}.tar). Then, with the device tool, back to back:
#   call 1..3  carry [".gpu/all/part-N.tar"]          bash benchmarks/gpu/lease.sh unpack .gpu/all/part-N.tar
#   call 4     carry [".whl", ".gpu/weights"]         bash benchmarks/gpu/lease.sh train     (about 9 minutes)
#   (call 5    carry [".whl"]                         bash benchmarks/gpu/lease.sh finish    only if 4 ran out of time)
#   call 6     carry [".whl"]                         bash benchmarks/gpu/lease.sh gpu-check (the test suite with the
#              GPU visible, then training steps under torch.cuda.set_sync_debug_mode("error"): issue 28)
# `train` measures the step time in a short calibration run, picks the number of epochs that fits
# TRAIN_BUDGET_S, trains in the background (setsid nohup: it outlives the call), polls until it ends or
# POLL_S has passed, then runs `finish`: evaluation (single scale and flip TTA), fp16 publication (scored
# too), the back-off promise (BACKOFF, default 0.75 on the pixels called a person: on the card and in the results JSON; backoff.json is not among
# the 8 files that come back, so write it here after the lease with
# `python eval.py --checkpoint pretrained/pascal_part_lite0 --data ../shared/datasets/pascal-part --split val
# --calibrate-backoff 0.9`), results JSON + Markdown, all copied to $OUT (at most 8 files come back).
#
# On CPU, end to end on the sample data: bash benchmarks/gpu/lease.sh smoke
set -euo pipefail
PYTHON=${PYTHON:-python3}   # the interpreter to run (tests pass their own: a venv need not be activated)
cd "$(dirname "$0")/../.."
ROOT=$PWD
DATA=${DATA:-/root/d/pascal-part}
RUN=${RUN:-/root/runs/pascal_part}
CONFIG=${CONFIG:-configs/pascal_part.yaml}
TRAIN_BUDGET_S=${TRAIN_BUDGET_S:-400}   # training seconds the epochs are chosen for (evaluation adds ~1 min)
CAL_STEPS=${CAL_STEPS:-40}
POLL_S=${POLL_S:-480}
OUT=${OUT:-$ROOT/.gpu/out}
EXTRA=()

python_env() {
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$ROOT
  else
    export PYTHONPATH=$ROOT
  fi
  export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  if [ -f .gpu/weights/tf_efficientnet_lite0.safetensors ]; then
    EXTRA+=("model.encoder_weights=$ROOT/.gpu/weights/tf_efficientnet_lite0.safetensors")
  fi
}

calibrate() {  # prints the number of epochs that fits TRAIN_BUDGET_S, from a CAL_STEPS-step run's seconds
  rm -rf "$RUN-calib"
  "$PYTHON" train.py --config "$CONFIG" "data.root=$DATA" "${EXTRA[@]}" "$@" "train.max_steps=$CAL_STEPS" \
    train.progress=false eval.max_batches=1 "train.out_dir=$RUN-calib" >"$RUN-calib.log" 2>&1
  "$PYTHON" - "$RUN-calib/metrics.csv" "$CAL_STEPS" "$TRAIN_BUDGET_S" "$CONFIG" "$DATA" "$@" <<'EOF'
import csv, sys
sys.path.insert(0, ".")
from hiertree.config import load_config
from hiertree.data import build_datasets
from hiertree.tree.taxonomy import Taxonomy
path, steps, budget, config, data, *over = sys.argv[1:]
seconds = float(list(csv.DictReader(open(path)))[-1]["seconds"])  # includes start-up: errs on the safe side
cfg = load_config(config, [f"data.root={data}", *over])
train, _ = build_datasets(cfg["data"], Taxonomy.load(cfg["taxonomy"]))
per_epoch = seconds / int(steps) * (len(train) // cfg["train"]["batch_size"])
print(max(1, int(float(budget) / per_epoch)))
print(f"calibration: {seconds:.1f} s for {steps} steps -> {per_epoch:.1f} s per epoch", file=sys.stderr)
EOF
}

finish() {  # score, publish fp16, and put the 8 files that come back under $OUT (int8_calibration.json is not one:
            # run benchmarks/int8_calibrate.py --model-out on the published folder here, on the CPU, after the lease)
  mkdir -p "$OUT"
  "$PYTHON" benchmarks/ship_model.py --run "$RUN" --data "$DATA" --name "${NAME:-pascal_part_lite0}" \
    --pretrained "$RUN-published" --results "$OUT" --backoff "${BACKOFF:-0.75}" --command "$*"
  cp "$RUN-published/${NAME:-pascal_part_lite0}"/{model.safetensors,config.yaml,taxonomy.yaml,README.md} "$OUT/"
  cp "$RUN/metrics.csv" "$OUT/" && tail -n 200 "$RUN.log" > "$OUT/train.log" || true
  ls -la "$OUT"
}

case "${1:?usage: lease.sh unpack PART | train | finish | gpu-check | smoke}" in
  unpack)
    mkdir -p "$(dirname "$DATA")" && tar xf "${2:?unpack needs a part-N.tar}" -C "$(dirname "$DATA")"
    du -sh "$DATA" && ls "$DATA/JPEGImages" | wc -l ;;
  train)
    shift
    python_env
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
    mkdir -p "$(dirname "$RUN")"
    epochs=$(calibrate "$@")
    echo "training $epochs epochs"
    setsid nohup "$PYTHON" train.py --config "$CONFIG" "data.root=$DATA" "${EXTRA[@]}" "$@" "train.epochs=$epochs" \
      train.progress=false "train.out_dir=$RUN" >"$RUN.log" 2>&1 < /dev/null &
    pid=$!
    start=$(date +%s)
    while kill -0 "$pid" 2>/dev/null && [ $(( $(date +%s) - start )) -lt "$POLL_S" ]; do
      sleep 15; tail -n 1 "$RUN/metrics.csv" 2>/dev/null | cut -c1-160 || true
    done
    if kill -0 "$pid" 2>/dev/null; then echo "still training after ${POLL_S}s: call 'lease.sh finish' next"; exit 3; fi
    finish "python train.py --config $CONFIG data.root=$DATA ${EXTRA[*]} $* train.epochs=$epochs" ;;
  finish)
    python_env
    finish "python train.py --config $CONFIG data.root=$DATA (see $RUN/config.yaml)" ;;
  gpu-check)  # the CUDA path (issue 28): the test suite with the GPU visible, then steps under sync debug mode
    python_env
    mkdir -p "$OUT"
    "$PYTHON" -m pytest -q -x -p no:cacheprovider tests 2>&1 | tail -n 40 | tee "$OUT/gpu-tests.txt"
    "$PYTHON" benchmarks/gpu/sync_check.py --steps 5 2>&1 | tee "$OUT/gpu-sync-check.txt" ;;
  smoke)
    shift
    export DATA=${DATA_SMOKE:-$ROOT/../shared/datasets/pascal-part-sample} RUN=${RUN_SMOKE:-/tmp/hiertree-lease-smoke/run}
    export OUT=${OUT_SMOKE:-/tmp/hiertree-lease-smoke/out} CAL_STEPS=2 TRAIN_BUDGET_S=1 POLL_S=300
    export BACKOFF=none  # 8 sample val images are too few to calibrate a promise on
    rm -rf "$(dirname "$RUN")"
    exec "$0" train model.encoder_weights=null data.crop=64 train.batch_size=4 train.num_workers=0 \
      train.warmup_steps=1 eval.batch_size=4 model.decoder_channels=16 "$@" ;;
  *) echo "unknown step $1: unpack PART | train | finish | gpu-check | smoke" >&2; exit 2 ;;
esac
