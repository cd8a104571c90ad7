#!/usr/bin/env bash
# The full labelled bench: fp32/fp16/int8/int4, unpruned and pruned 30 % (fine-tuned), against
# the 10k Fashion-MNIST test images. Trains the CNN first if there is no checkpoint (~8 min).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
OUT=edge-out/fashion_mnist
[ -f $OUT/cnn.pt ] || $PY examples/fashion_mnist/train.py
[ -d $OUT/data/test ] || $PY examples/fashion_mnist/data.py
common=(--input-shape 1x1x28x28 --card examples/fashion_mnist/card.yaml
        -t x86-fp32 -t x86-fp16 -t x86-int8 -t x86-int4
        --calib $OUT/data/calib --data $OUT/data/test)
.venv/bin/edge-opt bench examples/fashion_mnist/model.py:build "${common[@]}" --out $OUT/bench
.venv/bin/edge-opt bench examples/fashion_mnist/model.py:build "${common[@]}" \
    --prune 0.3 --finetune examples/fashion_mnist/train.py:finetune --out $OUT/bench-pruned
echo "reports: $OUT/bench/report.html $OUT/bench-pruned/report.html"
