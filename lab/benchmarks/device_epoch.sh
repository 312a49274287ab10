#!/usr/bin/env bash
# Issue 26 item 2 on a lent GPU in one call of about 5 minutes: a HyperCUT training epoch with the authors'
# train_hypercut.py against ours (lab/benchmarks/authors_epoch.py: theirs, ours in fp32 and with the default
# AMP, both loaders alone, the GPU's busy share), then the CUDA tests. Results: $OUT/authors_epoch.md and logs.
#
# Before the call, on this machine (the GPU machine reaches nothing outside):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl albumentations==1.3.1 qudida==0.0.4
#   python -m lab.benchmarks.authors_epoch --authors <their release> --prepare_only   # runs/authors_epoch/authors
# The call: carry [".whl", "runs/authors_epoch/authors"], command `bash lab/benchmarks/device_epoch.sh`.
# EPOCH_TINY=1: a CPU check of this script (tiny data, our side only).
set -u
cd "$(dirname "$0")/../.."
DEST=${OUT:-runs/authors_epoch/out}
mkdir -p "$DEST"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
  nproc; } > "$DEST/machine.txt"
if [ "${EPOCH_TINY:-0}" = 1 ]; then
  timeout 500 python3 -m lab.benchmarks.authors_epoch --device cpu --runs ours_fp32 ours_loader --num_train 16 \
    --size 288 --epochs 1 --results "$DEST/authors_epoch.md" 2>&1 | tee "$DEST/authors_epoch.log"
  exit 0
fi
timeout 420 python3 -m lab.benchmarks.authors_epoch --authors runs/authors_epoch/authors --device cuda \
  --results "$DEST/authors_epoch.md" 2>&1 | tee "$DEST/authors_epoch.log"
cp runs/authors_epoch/logs/*.log "$DEST/" 2>/dev/null
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$DEST/test_cuda.txt" 2>&1
echo "test_cuda rc=$? $(tail -1 "$DEST/test_cuda.txt")"
