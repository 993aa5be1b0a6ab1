#!/usr/bin/env bash
# Download, HERE (a machine with pip access), the wheels the GPU machine lacks, for its Python
# 3.12, into .whl/ (ignored by git; carried to the GPU machine with the `carry` option). The GPU
# image already has torch, torchvision, h5py, scikit-learn, matplotlib, click, numba, pyyaml,
# tqdm, safetensors, onnx, timm, tensorboard, pytest (see DEVELOPERS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY=${PY:-.venv/bin/python}
mkdir -p .whl
# name==version pinned to what the test suite runs with here; no dependencies resolved by pip
WHEELS=(
  astropy==8.0.2 astropy-iers-data pyerfa
  captum==0.9.0
  kornia==0.9.0 kornia-rs
  lightly==1.6.0 hydra-core omegaconf antlr4-python3-runtime aenum lightly-utils
  configparser corner jampy==8.1.4 plotbin mgefit capfit mpmath multiprocess dill
  pyxdg schwimmbad
)
for w in "${WHEELS[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "$w" 2>/dev/null \
  || echo "gpu_wheels: no wheel for $w (skipped)" >&2
done
# lenstronomy publishes only a source archive: build its (pure-Python) wheel here
"$PY" -m pip wheel -q --no-deps -w .whl lenstronomy==1.14.2
du -sh .whl
