#!/usr/bin/env bash
# Run on the dev machine (which reaches PyPI) before a lent-GPU session: gathers what the GPU machine lacks
# into git-ignored folders that the device tool carries (64 MiB a call):
#   .whl/          wheels for its Python 3.12 (albumentations 2.0.8 + deps, smp, ONNX Runtime, and pytest +
#                  hypothesis for lease.sh gpu-check), installed with --target
#   .gpu/weights/  the offline ImageNet lite0/lite2 weights, converted to timm safetensors here
#   .gpu/all/      the Pascal-Part copy in three tar parts under 60 MiB (../shared/tools/pack-pascal-part.sh ... 58)
# Then see benchmarks/README.md for the call sequence.
set -euo pipefail
PYTHON=${PYTHON:-python3}   # the interpreter to run (tests pass their own: a venv need not be activated)
cd "$(dirname "$0")/../.."
for d in /.whl/ /.gpu/; do grep -qxF "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done
mkdir -p .whl .gpu/weights
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl \
  albumentations==2.0.8 albucore==0.0.24 simsimd stringzilla pydantic pydantic-core annotated-types \
  typing-inspection segmentation-models-pytorch==0.6.0 onnx onnxruntime protobuf ml-dtypes flatbuffers \
  pytest pluggy iniconfig hypothesis sortedcontainers attrs
for v in lite0 lite2; do
  HIERTREE_WEIGHTS_DIR=.gpu/weights "$PYTHON" -m hiertree.cli.convert_weights "$v"
done
# the packer resolves OUT_DIR from its own folder: give it an absolute path
[ -f .gpu/all/part-1.tar ] || ../shared/tools/pack-pascal-part.sh "$PWD/.gpu/all" 58
du -sh .whl .gpu/weights .gpu/all
