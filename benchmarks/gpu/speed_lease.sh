#!/usr/bin/env bash
# One GPU lease for training speed (issue 14): hiertree and smp side by side, every speed lever, a profile.
#
# Here, once: `bash benchmarks/gpu/prepare.sh` (wheels into .whl/) and `bash benchmarks/gpu/speed_lease.sh pack`
# (600 Pascal-Part training images, ~31 MB, into .gpu/speed/pascal-part: the loader cycles them). Then one call:
#   carry [".whl", ".gpu/speed"]     bash benchmarks/gpu/speed_lease.sh run        (about 5 minutes)
# It writes speed-<date>-cuda.json (hiertree + smp: end-to-end and model-only img/s, data pipeline img/s per
# worker, peak memory, each lever of hiertree on and off, the top kernels of one step) under $OUT.
# On CPU, end to end on the sample data: bash benchmarks/gpu/speed_lease.sh smoke
set -euo pipefail
PYTHON=${PYTHON:-python3}   # the interpreter to run (tests pass their own: a venv need not be activated)
cd "$(dirname "$0")/../.."
ROOT=$PWD
SUBSET=${SUBSET:-$ROOT/.gpu/speed/pascal-part}
OUT=${OUT:-$ROOT/.gpu/out}

case "${1:?usage: speed_lease.sh pack [N] | run | smoke}" in
  pack)
    src=$ROOT/../shared/datasets/pascal-part n=${2:-600}
    grep -qxF /.gpu/ .git/info/exclude || echo /.gpu/ >> .git/info/exclude
    rm -rf "$SUBSET" && mkdir -p "$SUBSET/JPEGImages" "$SUBSET/masks"
    head -n "$n" "$src/train_id.txt" | tr -d '\r' > "$SUBSET/train_id.txt"
    head -n 8 "$SUBSET/train_id.txt" > "$SUBSET/val_id.txt"
    while read -r id; do cp "$src/JPEGImages/$id.jpg" "$SUBSET/JPEGImages/"; cp "$src/masks/$id.png" "$SUBSET/masks/"; done \
      < "$SUBSET/train_id.txt"
    du -sh "$SUBSET" ;;
  run)
    shift
    if compgen -G ".whl/*.whl" >/dev/null; then
      "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi
    export PYTHONPATH=/tmp/site:$ROOT NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    mkdir -p "$OUT"
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true
    set -o pipefail
    "$PYTHON" benchmarks/speed.py --data "$SUBSET" --levers --profile --out "$OUT" model.encoder_weights=null "$@" \
      2>&1 | tee "$OUT/speed.log"
    for w in 4 8; do  # the data pipeline with fewer workers: img/s per worker
      "$PYTHON" benchmarks/speed.py --data "$SUBSET" --data-only --steps 60 --warmup 5 --out "$OUT/workers-$w" \
        model.encoder_weights=null "train.num_workers=$w" "$@" 2>&1 | grep -A1 data_pipeline_img_s | tee -a "$OUT/speed.log"
      mv "$OUT/workers-$w"/speed-*.json "$OUT/speed-workers-$w.json" && rmdir "$OUT/workers-$w"
    done ;;
  smoke)
    shift
    export SUBSET=${SUBSET_SMOKE:-$ROOT/../shared/datasets/pascal-part-sample} OUT=${OUT_SMOKE:-/tmp/hiertree-speed-smoke}
    rm -rf "$OUT"
    # compile is left out here: inductor's first compile takes minutes on 2 cores (the lease times it)
    exec "$0" run --steps 2 --warmup 1 --infer-size 64 --infer-repeats 2 --skip-levers compile data.crop=64 \
      train.batch_size=2 train.num_workers=0 model.decoder_channels=16 "$@" ;;
  *) echo "unknown step $1: pack [N] | run | smoke" >&2; exit 2 ;;
esac
