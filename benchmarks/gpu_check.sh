#!/usr/bin/env bash
# The prepared GPU check (one call, < 8 minutes on one GPU). See DEVELOPERS.md for how to make a
# GPU run: prepare the wheels (benchmarks/gpu_wheels.sh) and the CIFAR-10 subset (.cifar) here,
# then on the GPU machine, from the repository root, with `.whl` and `.cifar` carried:
#     bash benchmarks/gpu_check.sh
# It writes everything under $OUT (default gpu_check_out/): gpu_check.json (the summary: every
# number with its command), the logs of each part and the GPU utilisation samples.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "gpu_check: wheel install failed" >&2; exit 1; }
fi
mkdir -p /tmp/site && ln -sfn "$PWD/cli" /tmp/site/deeplense_ssl_cli  # the CLI's package name
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
CIFAR=${CIFAR:-.cifar}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
# GPU utilisation every 200 ms for the whole check (the "GPU never idle" claim is read from it)
nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader,nounits -lms 200 \
  > "$OUT/utilisation.csv" 2>/dev/null &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null' EXIT

part() {  # part NAME TIMEOUT_S COMMAND...: run one part, log it, record its command and status
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s.%N)
  echo "== $name: $*" | tee -a "$OUT/commands.txt"
  date +%s.%N > "$OUT/$name.start"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  date +%s.%N > "$OUT/$name.stop"
  echo "$name rc=$rc wall_s=$(awk -v a="$(date +%s.%N)" -v b="$t0" "BEGIN{print a - b}")" | tee -a "$OUT/commands.txt"
}

# 1. the CUDA-only tests (skipped on CPU machines)
part cuda_tests 150 python3 -m pytest -q -p no:cacheprovider -rs \
  tests/test_transforms.py tests/training/test_pretrain_loop.py -k "cuda or gpu"
# 2. one SimCLR step and epoch, ours vs lightly, same GPU, same batch (target >= 1.5x)
part train_speed 150 python3 benchmarks/train_speed.py --device cuda --n 8192 --size 32 \
  --chans 3 --batch 512 --stem cifar --threads 16 --lightly-workers 8 --steps 16 --rounds 2 \
  --json "$OUT/train_speed_gpu.json"
# 3. a CIFAR-10 SimCLR epoch on the subset (anchor: 11.9 s / epoch for 50k images on an A100)
part cifar_epoch 120 python3 benchmarks/cifar10_sanity.py --data-dir "$CIFAR" --setting quick \
  --epochs 1 --batch-size 512 --device cuda --skip-lightly --skip-supervised \
  --work-dir /tmp/cifar_runs --out "$OUT/cifar_epoch_gpu.json"
# 4. the demo's GPU plan in quick form, end to end through the CLI
part demo_quick 120 python3 -m deeplense_ssl_cli.main demo --quick --device cuda \
  --out /tmp/demo_gpu

python3 benchmarks/gpu_summary.py "$OUT" > "$OUT/gpu_check.json"
cat "$OUT/gpu_check.json"
