#!/usr/bin/env bash
# Issue 9's GPU job: Figure 3 at hidden 200 and 400 (ADMM B = 10 with H-steps 2 and 5,
# BPTT K = 10; 3 seeds), hidden 400 at θ-lr 0.1 and 0.01 (the grid's two hidden-400 groups):
# 27 runs, sized for one call on a lent H100/H200 (at most 10 minutes a call). The θ-lr 0.01
# runs alone: HIDDEN=400 EXTRA="--filter lr=0.01". The hidden-50 and hidden-100 points are
# CPU runs in docs/results/figure3; HIDDEN=50,200,400 redoes hidden 50 too.
#
# The sweep stops at $LIMIT (default 8m) with `--time-limit`: what finished by then is a
# result, what did not is listed in sweep.log. A lent machine returns at most 8 files of 16 MiB,
# so the run folders come back as one archive without their checkpoints:
#
#   here:     mkdir -p .devdata && cp -r DATA/ptb .devdata/      (.devdata/ is git-ignored)
#   device:   DATA=.devdata bash experiments/gpu_figure3.sh      (carry: [".devdata"])
#   here:     mkdir -p runs/gpu && tar xzf OUT/figure3-runs.tgz -C runs/gpu
#             tprop collect runs/gpu/figure3-gpu --into docs/results/figure3   (beside the CPU points)
#             tprop report docs/results/figure3
#
# On a CPU, to try the script itself in a minute on tiny budgets:
#   DEVICE=cpu SEEDS=1, JOBS=2 LIMIT=5m DATA=DIR \
#     EXTRA="--set train_limit=2000 --set eval_limit=1000 --set epochs=1" OUT=/tmp/f3 \
#     bash experiments/gpu_figure3.sh
set -euo pipefail
OUT=${OUT:-runs/gpu-figure3}
RUNS=${RUNS:-runs/figure3-gpu}
LIMIT=${LIMIT:-8m}
SEEDS=${SEEDS:-3}
HIDDEN=${HIDDEN:-200,400}
JOBS=${JOBS:-27}
DEVICE=${DEVICE:-cuda}
DATA_FLAG=${DATA:+--data-dir $DATA}
mkdir -p "$OUT" "$(dirname "$RUNS")"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  git rev-parse HEAD 2>/dev/null || echo "commit: ${TPROP_GIT_COMMIT:-unknown}"
} > "$OUT/machine.txt"
start=$(date +%s)
# shellcheck disable=SC2086  # EXTRA and DATA_FLAG are lists of flags
tprop sweep figure3 --filter hidden="$HIDDEN" --seeds "$SEEDS" --jobs "$JOBS" \
  --device "$DEVICE" $DATA_FLAG ${EXTRA:-} --time-limit "$LIMIT" --out "$RUNS" \
  > "$OUT/sweep.log" 2>&1 || echo "tprop sweep exited $?" >> "$OUT/sweep.log"
echo "wall time $(( $(date +%s) - start )) s" >> "$OUT/sweep.log"
tar czf "$OUT/figure3-runs.tgz" --exclude checkpoint.pt -C "$(dirname "$RUNS")" "$(basename "$RUNS")"
tail -n 5 "$OUT/sweep.log"
