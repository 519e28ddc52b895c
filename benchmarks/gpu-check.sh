#!/usr/bin/env bash
# Issue 10's GPU figures in one short run (about 8 minutes on one H100/H200). Writes its
# results under $OUT (default runs/gpu-check). PTB must be where tprop finds it, or in
# $DATA (a folder holding ptb/): e.g. copy it to .devdata/ and pass DATA=.devdata.
#
#   1. the fast-path tests on the GPU (tests/test_accel.py: no step syncs the GPU, bf16 and
#      compile close to the plain path);
#   2. compiled / graph-captured BPTT against eager tprop, S = 32, K = 20, hidden 200
#      (target ≥ 2×), and bf16 against fp32;
#   3. one batch-mode BTPROP epoch (B = 20, one H-step, hidden 200) against one minibatch
#      cuDNN BPTT epoch (S = 32, K = 20) on full PTB (target: batch mode ≥ 10× faster).
set -euo pipefail
OUT=${OUT:-runs/gpu-check}
DATA=${DATA:+--data-dir $DATA}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
python -c "import torch; print(torch.__version__, torch.version.cuda)" >> "$OUT/gpu.txt"

python -m pytest -q tests/test_accel.py 2>&1 | tail -3 > "$OUT/tests.txt"

for s in compile=reduce-overhead compile=default precision=bf16 optim_impl=for-loop cross_entropy=autograd; do
  tprop bench switch $DATA --device cuda --hidden 200 --method admm --h-steps 1 \
    --steps 50 --rounds 5 --set "$s" --no-progress
done > "$OUT/switch.md" 2> "$OUT/switch.err"

common="--dataset ptb $DATA --device cuda --hidden 200 --epochs 1 --no-progress --overwrite"
tprop train $common --method bptt --batch-size 32 --bptt 20 --out "$OUT/bptt" \
  > "$OUT/bptt.log" 2>&1
tprop train $common --method admm --full-batch --block-size 20 --h-steps 1 \
  --out "$OUT/batch-admm" > "$OUT/batch-admm.log" 2>&1
python - "$OUT" <<'PY' > "$OUT/epochs.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def epoch_s(run):
    rows = [json.loads(l) for l in (out / run / "metrics.jsonl").open()]
    return next(r["train/epoch_s"] for r in rows if r.get("event") == "epoch")
b, a = epoch_s("bptt"), epoch_s("batch-admm")
print(f"minibatch BPTT epoch {b:.2f} s, batch-mode ADMM epoch {a:.2f} s, ratio {b / a:.2f}")
PY
cat "$OUT"/gpu.txt "$OUT"/tests.txt "$OUT"/switch.md "$OUT"/epochs.txt
