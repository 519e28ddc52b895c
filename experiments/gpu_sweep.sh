#!/usr/bin/env bash
# One built-in sweep (or a TOML grid) in one call on a lent GPU machine, sized for its limits
# (at most 10 minutes a call, a few files back): every selected run at once, a time limit that
# checkpoints what is unfinished, and the run folders returned as one archive.
#
#   bash experiments/gpu_sweep.sh GRID [tprop sweep flags…]
#
# Issue 9's GPU jobs, each one call (what the CPU runs in docs/results lack):
#   bash experiments/gpu_sweep.sh figure3 --filter hidden=400 --filter h_steps=5   # 6 runs (θ-lr 0.1, 0.01)
#   bash experiments/gpu_sweep.sh table1-batch-ptb --filter '*[BK]20_*'            # the B = 20 column, 12 runs
#   bash experiments/gpu_sweep.sh table1-batch-ptb                                 # 36 runs
#   bash experiments/gpu_sweep.sh figure3 --filter hidden=200,400                  # 27 runs
#
# The script sets the sweep's --jobs, --device, --time-limit and --out from the environment (so
# they are refused among the flags): JOBS (default: every selected run at once), DEVICE (default
# cuda), LIMIT (default 8m), RUNS (default runs/GRID-gpu, the sweep folder; rerunning the script
# on a warm machine resumes it from the checkpoints). Also DATA (folder holding ptb/; default:
# tprop's own) and OUT (default runs/gpu-GRID: machine.txt and sweep.log, appended to by each
# call, and GRID-runs.tgz).
# A lent machine returns at most 8 files of 16 MiB, so the archive leaves checkpoints out:
#
#   here:     mkdir -p .devdata && cp -r DATA/ptb .devdata/      (.devdata/ is git-ignored)
#   device:   DATA=.devdata bash experiments/gpu_sweep.sh GRID …  (carry: [".devdata"])
#   here:     mkdir -p runs/gpu && tar xzf OUT/GRID-runs.tgz -C runs/gpu
#             tprop collect runs/gpu/GRID-gpu --into docs/results/FOLDER
#             tprop report docs/results/FOLDER
#
# On a CPU (tests/test_sweep.py runs it so on a tiny corpus), to try it in a minute on PTB:
#   DEVICE=cpu JOBS=2 LIMIT=5m DATA=DIR OUT=/tmp/g RUNS=/tmp/g/runs bash experiments/gpu_sweep.sh \
#     table1-batch-ptb --filter '*[BK]20_*' --seeds 1, \
#     --set train_limit=2000 --set eval_limit=1000 --set epochs=2
set -euo pipefail
if [[ $# -lt 1 || $1 == -* ]]; then
  echo "usage: bash experiments/gpu_sweep.sh GRID [tprop sweep flags…] (GRID: a built-in name or a .toml file)" >&2
  exit 2
fi
GRID=$1
shift
for flag in "$@"; do
  case $flag in
    --jobs|--jobs=*|--device|--device=*|--time-limit|--time-limit=*|--out|--out=*)
      echo "gpu_sweep.sh: ${flag%%=*} is the script's to set; use JOBS, DEVICE, LIMIT or RUNS in the environment" >&2
      exit 2 ;;
  esac
done
name=$(basename "$GRID" .toml)
OUT=${OUT:-runs/gpu-$name}
RUNS=${RUNS:-runs/$name-gpu}
LIMIT=${LIMIT:-8m}
DEVICE=${DEVICE:-cuda}
DATA_FLAG=${DATA:+--data-dir $DATA}
if [[ -z ${JOBS:-} ]]; then  # every selected run at once: count them with a dry run
  # shellcheck disable=SC2086  # DATA_FLAG is a list of flags
  JOBS=$(tprop sweep "$GRID" "$@" $DATA_FLAG --out "$RUNS" --dry-run | grep -c '^start\|^resume\|^retry' || true)
  JOBS=$(( JOBS > 0 ? JOBS : 1 ))
fi
mkdir -p "$OUT" "$(dirname "$RUNS")"
{ date -u +"call at %Y-%m-%d %H:%M:%S UTC"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  git rev-parse HEAD 2>/dev/null || echo "commit: ${TPROP_GIT_COMMIT:-unknown}"
  echo "tprop sweep $GRID $(printf '%q ' "$@")--jobs $JOBS --device $DEVICE --time-limit $LIMIT"
} >> "$OUT/machine.txt"
start=$(date +%s)
# shellcheck disable=SC2086
tprop sweep "$GRID" "$@" --jobs "$JOBS" --device "$DEVICE" $DATA_FLAG --time-limit "$LIMIT" \
  --out "$RUNS" >> "$OUT/sweep.log" 2>&1 || echo "tprop sweep exited $?" >> "$OUT/sweep.log"
echo "wall time $(( $(date +%s) - start )) s" >> "$OUT/sweep.log"
tar czf "$OUT/$name-runs.tgz" --exclude 'checkpoint.pt*' -C "$(dirname "$RUNS")" "$(basename "$RUNS")"
tail -n 5 "$OUT/sweep.log"
