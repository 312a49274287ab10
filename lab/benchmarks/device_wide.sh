#!/usr/bin/env bash
# The rest of issue 11's full-width matrix (lab/ordering.md section 8) as ONE device call of under 10
# minutes: the rows the first H100 calls did not run (the paper's HyperCUT, pit, alpha 0.02 / 0.2), beside
# a naive run on the random order as this call's own reference, all sharing one GPU with the recipe of
# section 8 (full-width Jin, bf16, batch 16 of 64x64 crops) and at most the first calls' 71 epochs.
# Results: one archive, $OUT/results.tgz (matrix.md/json, the wide report and figures, every log).
# Measured on an H100 on 2026-11-27 (this default, and WIDE_MINUTES=2.3 WIDE_ROWS="naive hcloss_paper_a0.02
# hcloss_ext_a0.2"): lab/ordering.md section 8, "The remaining rows"; returned files in lab/results/wide_h100_*.
#
# Before the call (on the CPU), put the two HyperCUTs where order_matrix looks for them, so the GPU
# time goes to the deblurring runs (both are git-ignored; carry them):
#   python train_hypercut.py ...        # the commands of lab/ordering.md section 3 and README "Measured results"
#   mkdir -p runs/order_matrix/checkpoints/hc_paper/models runs/order_matrix/checkpoints/hc_ext/models
#   cp <paper HyperCUT>/models/0024.pth runs/order_matrix/checkpoints/hc_paper/models/
#   cp <hc_flow_crop4>/models/0008.pth runs/order_matrix/checkpoints/hc_ext/models/
# then   run(command="bash lab/benchmarks/device_wide.sh", carry=["runs/order_matrix/checkpoints"], timeout_s=600)
#
# WIDE_MINUTES (default 5.5; every run must start within 150 s, after the dataset and the two HyperCUTs' orders): training time of each run; WIDE_ROWS: the rows (default below);
# WIDE_TINY=1: every stage at a tiny scale on the CPU (a check of this script).
set -u
cd "$(dirname "$0")/../.."
MINUTES=${WIDE_MINUTES:-5.5}
ROWS=${WIDE_ROWS:-"naive naive_hc_paper hcloss_paper_a0.2 pit hcloss_ext_a0.02 hcloss_paper_a0"}
R=$(mktemp -d)
START=$SECONDS
stamp() { echo "$(date +%T) +$((SECONDS - START))s $*" | tee -a "$R/round.log"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  python -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
  nproc; } > "$R/machine.txt"
CARD=$(sed -n 2p "$R/machine.txt" | cut -d, -f1)
stamp "machine: ${CARD:-unknown}"

if [ "${WIDE_TINY:-0}" = 1 ]; then
  EXTRA=(--tiny --device cpu --jobs 2); WORK=runs/order_matrix_tiny
else
  EXTRA=(--jobs 6 --num_workers 2 --wide_epochs 71 --launch_deadline 150 --deadline 545); WORK=runs/order_matrix
fi
# shellcheck disable=SC2086
python -m lab.experiments.order_matrix --out "$R/om" --work "$WORK" --budgets wide --rows $ROWS --no_probe \
  --no_ablations --minutes "$MINUTES" "${EXTRA[@]}" > "$R/order_matrix.log" 2>&1
stamp "order_matrix rc=$?"

# the wide report: this call's results, the runs' logs and the blur baseline order_matrix computed
mkdir -p "$R/wide"
cp "$R"/om/results/jin_wide_*.json "$R"/om/results/jin_wide_*.csv "$R/wide/" 2>/dev/null
mkdir -p "$R/wide/tiled"  # the same models predicting in 64x64 windows (test_blur2vid.py --tile crop)
cp "$R"/om/results/tiled/jin_wide_*.json "$R/wide/tiled/" 2>/dev/null
for run in "$WORK"/checkpoints/jin_wide_*; do
  [ -f "$run/log.txt" ] && cp "$run/log.txt" "$R/wide/$(basename "$run")_log.txt"
done
python -c "import json, sys; m = json.load(open(sys.argv[1]))['matrix']; json.dump(m['blur'], open(sys.argv[2], 'w')); json.dump(m['pair_mean'], open(sys.argv[3], 'w'))" \
  "$R/om/matrix.json" "$R/wide/blur.json" "$R/wide/pair_mean.json" && \
python -m lab.experiments.wide_report --results "$R/wide" --out "$R/wide_report.md" --figures "$R" --prefix wide \
  --card "${CARD:-}" > "$R/wide_report.log" 2>&1
stamp "wide_report rc=$?"
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv >> "$R/machine.txt" 2>&1
DEST=${OUT:-.}
tar czf "$DEST/results.tgz" -C "$R" . && stamp "wrote $DEST/results.tgz"
