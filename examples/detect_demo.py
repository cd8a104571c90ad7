"""Detection demo: people on a street, tracked, counted at a line, written to video and events.

    python examples/detect_demo.py                      # writes demo-out/
    python examples/detect_demo.py --source 0           # a webcam instead of the clip

1. Exports the real detector shipped in examples/models/ (SSDLite-MobileNetV2, COCO) with
   `edge-opt export` into an x86-fp32 ONNX bundle, calibrated on frames of the clip itself so
   the bundle's drift statistics describe this camera.
2. Runs `edge_sdk.Pipeline` on examples/data/vtest_short.avi (18 s of OpenCV's vtest.avi,
   768x576): ByteTrack, a zone on the road and a counting line across it; sinks write an
   annotated video, an events file and a per-frame results file.
3. Prints the pipeline's summary (FPS, latency per stage, drops, drift, event counts).

Nothing is downloaded: the model file and the clip ship with the project.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edge_sdk  # noqa: E402
from edge_sdk.cli import summary  # noqa: E402
from edge_sdk.sinks import AnnotatedVideoSink, JsonlSink  # noqa: E402

MODEL = ROOT / "examples" / "models" / "ssdlite_mobilenet_v2_coco.onnx"
LABELS = ROOT / "examples" / "models" / "coco_labels.txt"
CLIP = ROOT / "examples" / "data" / "vtest_short.avi"
# In frame pixels of the 768x576 clip: the stretch of road people walk along, and a line
# across it. Zones and lines use each box's bottom centre (where the feet are).
ZONES = {
    "zones": [{"name": "road", "polygon": [[300, 225], [640, 225], [700, 350], [300, 350]]}],
    "lines": [{"name": "crossing", "start": [520, 190], "end": [520, 350]}],
}


def calibration_frames(clip: Path, folder: Path, every: int = 10) -> Path:
    """Every 10th frame of the clip as JPEGs: the drift reference for this camera."""
    folder.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(clip))
    index = 0
    while (item := cap.read())[0]:
        if index % every == 0:
            cv2.imwrite(str(folder / f"frame_{index:04d}.jpg"), item[1])
        index += 1
    return folder


def export_bundle(out: Path, clip: Path) -> Path:
    bundle = out / "bundle" / "x86-fp32"
    if (bundle / "manifest.json").is_file():
        return bundle
    calib = calibration_frames(clip, out / "calib")
    cmd = [sys.executable, "-m", "optimize.cli", "export", str(MODEL), "--target", "x86-fp32",
           "--format", "onnx", "--task", "detect", "--decoder", "yolo-nms", "--layout", "NHWC",
           "--resize", "stretch", "--color", "RGB", "--mean", "0", "--std", "1",
           "--labels", str(LABELS), "--decoder-params", '{"conf_threshold": 0.2}',
           "--calib", str(calib), "--runs", "5", "-q", "--out", str(out / "bundle")]  # fmt: skip
    print("exporting the detector:", " ".join(cmd[2:5]), "...", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return bundle


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=str(CLIP), help="video, camera index or stream URL")
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = export_bundle(args.out, CLIP)

    video, events, results = (args.out / n for n in ("annotated.mp4", "events.jsonl",
                                                      "results.jsonl"))  # fmt: skip
    pipeline = edge_sdk.Pipeline(
        args.source, bundle, tracker="bytetrack", zones=ZONES,
        sinks=[AnnotatedVideoSink(video), JsonlSink(events, events_only=True),
               JsonlSink(results)],
        sink_policy="wait",  # a file: every frame into the video, none dropped
        on_status=lambda update: update.kind != "ended" and print(update, file=sys.stderr),
    )  # fmt: skip
    for r in pipeline:
        for event in r.events:
            if event.kind == "line_crossed":
                print(f"frame {event.frame_index:4d}: person #{event.tracker_id} crossed "
                      f"{event.line} ({event.direction}); in {event.in_count}, "
                      f"out {event.out_count}")  # fmt: skip
    outputs = [f"annotated video: {video}", f"events file: {events}",
               f"results file: {results}"]  # fmt: skip
    print(summary(pipeline.metrics(), pipeline, outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
