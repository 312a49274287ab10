#!/usr/bin/env bash
# Everything this project checks on a GPU, as one command of under 10 minutes (a lent device's call):
# the CUDA tests, lab/benchmarks/bench.py on CUDA, and the two experiments (lab/experiments/order_matrix.py,
# lab/experiments/backbone_table.py) on one shared dataset, each stopped at a deadline and written from
# what finished. Results: one archive, $OUT/results.tgz (or ./device_results.tgz without $OUT).
#
#   git archive baseline-r7 | (mkdir -p .baseline-r7 && tar -x -C .baseline-r7)   # the bench's baseline
#   bash lab/benchmarks/device_round.sh                      # ROUND_SECONDS=570 by default
#
# Running it again on the same machine (same runs/ folder) resumes the experiments' trainings.
set -u
cd "$(dirname "$0")/../.."
ROUND=${ROUND_SECONDS:-570}
R=$(mktemp -d)
START=$SECONDS
left() { echo $((ROUND - (SECONDS - START))); }
stamp() { echo "$(date +%T) +$((SECONDS - START))s $*" | tee -a "$R/round.log"; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
  nproc; } > "$R/machine.txt" 2>&1
stamp "machine: $(head -2 "$R/machine.txt" | tail -1)"

# one dataset for both experiments, rendered on the CPU cores while the CUDA tests run
DATA=runs/device_data
mkdir -p runs/order_matrix runs/backbone_table
( [ -f $DATA/metadata.json ] || python prepare_dataset.py synthetic --out $DATA --workers 8 ) > "$R/data.log" 2>&1 &
DATA_PID=$!
timeout 120 python -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$R/test_cuda.txt" 2>&1
stamp "test_cuda rc=$? $(tail -1 "$R/test_cuda.txt")"
wait $DATA_PID
stamp "dataset rc=$?"
ln -sfn "$(pwd)/$DATA" runs/order_matrix/data
ln -sfn "$(pwd)/$DATA" runs/backbone_table/data

# the bench alone on the GPU (its timings are not shared with anything)
timeout 150 python -m lab.benchmarks.bench --device cuda --repeats 5 --out "$R/RESULTS_cuda.md" > "$R/bench.log" 2>&1
stamp "bench rc=$?"

# the experiments share the GPU for the time left; both write their reports from what finished
T=$(( $(left) - 25 ))
python -m lab.experiments.order_matrix --out "$R/order_matrix" --jobs 6 --no_ablations --launch_deadline $((T - 60)) --deadline "$T" \
  > "$R/order_matrix.log" 2>&1 &
python -m lab.experiments.backbone_table --out "$R/backbones" --jobs 2 --num_workers 1 --deadline "$((T - 15))" \
  > "$R/backbones.log" 2>&1 &
wait
stamp "experiments done"
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv >> "$R/machine.txt" 2>&1
DEST=${OUT:-.}
tar czf "$DEST/results.tgz" -C "$R" . && stamp "wrote $DEST/results.tgz"
