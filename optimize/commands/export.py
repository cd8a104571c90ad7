"""`edge-opt export MODEL --target T [--target T ...]`: model -> bundles + report."""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from pathlib import Path

from edge_sdk.argtypes import count, positive_int
from optimize.modelcard import ModelCard, parse_floats, parse_json_object, read_labels
from optimize.tasks import task_names

EPILOG = """\
examples:
  edge-opt export model.onnx --target jetson-int8 --calib photos/ --out out/
  edge-opt export mypkg/net.py:build --input-shape 1x3x224x224 --target x86-int8 \\
      --format onnx --calib photos/
  edge-opt export model.onnx --target x86-int8 --format auto --calib photos/ --eval held/
  edge-opt export model.onnx --target x86-int8 --target jetson-int8 --target x86-fp16 \\
      --calib calib/ --eval eval/ --resize center-crop --mean 127 --std 128 --labels labels.txt

targets are PROFILE-PRECISION (`edge-opt profiles` lists them): precision is fp32, fp16,
int8 (needs --calib) or int4 (weight-only, MatMul/Gemm weights). Each target becomes a bundle
folder OUT/TARGET with manifest.json, the model, labels.txt and report.md/report.json; one
combined report.md/report.json is written to OUT. A target that fails does not stop the
others: every target that succeeded is written, the failed ones are named with their reason
(also in OUT/report.*), and the exit status is 1 (2 when nothing was written).

preprocessing (recorded in the manifest, applied identically on the device): pass flags or a
--card file (YAML/JSON with keys task, decoder, decoder_params, labels, preprocess). Without
them: RGB, stretch resize, pixels / 255.
"""


def finite_float(text: str) -> float:
    """argparse type for --max-drop (a floor in dB may be negative; the task checks the rest)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


# int8 needs per-channel QuantizeLinear (opset 13); above 21 the runtimes pinned here lag.
MIN_OPSET, MAX_OPSET = 13, 21


def opset(text: str) -> int:
    """argparse type for --opset: refused here, not after torch.onnx has printed its graph."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not MIN_OPSET <= value <= MAX_OPSET:
        raise argparse.ArgumentTypeError(f"must be {MIN_OPSET}-{MAX_OPSET}, got {value}; e.g. "
                                         "18 (17 for TensorRT 8.5)")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        # one usage line: an argparse error is then two lines, not a screenful of flags
        usage="edge-opt export MODEL --target TARGET [--target TARGET ...] [options]",
        help="quantize and export a model into one bundle per target, with a report",
        description="Quantize and export a model for one or more device targets.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="an .onnx file, or a PyTorch factory: file.py:fn or pkg.mod:fn")
    p.add_argument("--target", "-t", action="append", required=True, metavar="TARGET",
                   help="PROFILE-PRECISION, e.g. jetson-int8, rpi5-fp16, x86-int4; repeatable")
    p.add_argument("--out", "-o", type=Path, default=Path("edge-out"),
                   help="output folder (default: edge-out)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT/TARGET and OUT/report.* even when edge-opt did not write "
                        "them (by default only edge-opt's own bundles and reports are replaced)")
    p.add_argument("--format", choices=["onnx", "tflite", "openvino", "auto", "default"],
                   help="override the profile's default format; auto: build every format the "
                        "device runs, time them on this host (when it is of the device's CPU "
                        "class, else the default stays) and keep the fastest within the "
                        "accuracy budget; default: each profile's default format. Without "
                        "--format, int8 targets whose device class is this host's (x86 on "
                        "x86-64) use auto, the others their profile's default")
    p.add_argument("--input-shape", metavar="NxCxHxW",
                   help="input shape, required for PyTorch models and dynamic ONNX inputs")
    p.add_argument("--opset", type=opset,
                   help=f"ONNX opset for PyTorch exports, {MIN_OPSET}-{MAX_OPSET} (default 18; "
                        "17 for TensorRT 8.5 / JetPack 5)")
    data = p.add_argument_group("data")
    data.add_argument("--calib", type=Path, metavar="DIR",
                      help="folder of calibration images (needed for int8)")
    data.add_argument("--eval", type=Path, metavar="DIR",
                      help="held-out images for the accuracy columns (default: every 5th "
                           "calibration image is held out)")
    data.add_argument("--calib-size", type=positive_int, default=300,
                      help="use at most this many calibration images (default 300)")
    data.add_argument("--scheme", metavar="NAME",
                      help="int8/int4 quantization scheme instead of the profile's, where it "
                           "fits the target's format (see device_profiles/schemes.yaml), e.g. "
                           "nncf-int8")
    data.add_argument("--calib-method", choices=["minmax", "entropy", "percentile"],
                      default="minmax",
                      help="how int8 activation ranges are chosen (default minmax; the accuracy "
                           "guard tries the others when the budget is missed). TFLite targets: "
                           "minmax, or percentile = the mean of each image's min and max")
    data.add_argument("--bias-correction", action=argparse.BooleanOptionalAction,
                      default=None,
                      help="int8: correct layer biases for the rounding of their weights "
                           "(default: on, where it roughly halves the output error of depthwise "
                           "networks such as EfficientNet-Lite; off for detectors, where it "
                           "moved YOLO11n's person scores down as a whole; the accuracy guard "
                           "tries the other setting when the budget is missed)")
    pre = p.add_argument_group("preprocessing and task (else from --card or the model)")
    pre.add_argument("--card", type=Path, metavar="FILE", help="model card (YAML or JSON)")
    pre.add_argument("--resize", choices=["stretch", "letterbox", "center-crop"])
    pre.add_argument("--crop-fraction", type=float, help="center-crop fraction (default 0.875)")
    pre.add_argument("--color", choices=["RGB", "BGR"], help="channel order the model expects")
    pre.add_argument("--layout", choices=["NCHW", "NHWC"])
    pre.add_argument("--mean", help="per-channel mean on 0-255 pixels, e.g. 123.7,116.3,103.5")
    pre.add_argument("--std", help="per-channel std on 0-255 pixels, e.g. 58.4,57.1,57.4")
    pre.add_argument("--task", choices=task_names(),
                     help="what the outputs mean (default: from the model's metadata or "
                          "shapes; raw, any named tensors, when it cannot be told)")
    pre.add_argument("--decoder", help="decoder name, e.g. topk, yolov8; or your own for a head "
                     "the toolkit does not know, file.py:Name or pkg.mod:Name (copied into "
                     "the bundle; the device runs it only with --trust-bundle-code)")
    pre.add_argument("--decoder-params", metavar="JSON", help='e.g. \'{"top_k": 5}\'')
    pre.add_argument("--labels", type=Path, metavar="FILE", help="class names, one per line")
    prune = p.add_argument_group("structured pruning (PyTorch sources, before quantization)")
    prune.add_argument("--prune", type=float, metavar="RATIO",
                       help="remove this fraction of channels (e.g. 0.3) with torch-pruning")
    prune.add_argument("--prune-macs", type=float, metavar="BUDGET",
                       help="or prune until at most this fraction of the MACs is left")
    prune.add_argument("--finetune", metavar="FILE.py:FN",
                       help="a function fn(model) that trains the pruned model for a few steps")
    guard = p.add_argument_group("accuracy guard (int8/int4/fp16, measured on the held-out images)")
    guard.add_argument("--max-drop", type=finite_float, metavar="BUDGET",
                       help="accuracy budget in the task's unit: classify, points of top-1 "
                            "agreement with FP32 (default: the profile's max_drop); detect, "
                            "points of max(100 x (1 - mAP@0.5:0.95), 200 x (1 - F1)) vs FP32 "
                            "(default 10); pose, the same with OKS mAP (default 10); "
                            "segment, points of 100 x (1 - IoU) of the foreground for a "
                            "one-class map (text, person), of mIoU for more classes, or of "
                            "mask mAP for instance masks (default 10); raw, the SQNR floor in "
                            "dB (default 20)")
    guard.add_argument("--no-float-tail", dest="float_tail", action="store_false",
                       help="int8: quantize a detector's head tail too (box decoding, score "
                            "sigmoids, the concat of coordinates and scores); by default it "
                            "stays float, since one int8 range cannot hold pixels and scores")
    guard.add_argument("--no-score-calibration", dest="score_calibration",
                       action="store_false",
                       help="int8 detectors and pose models: keep the quantized model's scores "
                            "as they come; by default they are moved on the logit scale to "
                            "meet FP32's on the calibration images (the manifest's "
                            "score_shift)")
    guard.add_argument("--force", action="store_true",
                       help="write bundles that stay over the budget anyway (marked in the "
                            "report)")
    guard.add_argument("--guard-tries", type=count, default=16, metavar="N",
                       help="layers the guard may try keeping in float (default 16); 0 "
                            "judges without searching (no other calibration method either)")
    p.add_argument("--sign", type=Path, metavar="KEY",
                   help="sign each bundle with this key (edge-opt keygen), as edge-opt sign does")
    p.add_argument("--model-version", type=positive_int, metavar="N",
                   help="version recorded by --sign (default: Unix time)")
    p.add_argument("--runs", type=positive_int, default=50,
                   help="timed runs per bundle (default 50)")
    p.add_argument("--batch", type=positive_int, default=1, metavar="N",
                   help="frames per model call on the device (edge-run with several sources): "
                   "the model's batch dimension stays dynamic and the manifest records "
                   "max_batch N (ONNX sources with a dynamic batch axis; ONNX, OpenVINO and TFLite "
                   "bundles; default 1)")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress lines or bars on stderr (errors are still shown)")
    p.set_defaults(func=run)


def card_from_args(args) -> ModelCard:
    pre = {}
    for key in ("resize", "color", "layout", "crop_fraction"):
        if getattr(args, key) is not None:
            pre[key] = getattr(args, key)
    for key in ("mean", "std"):
        values = parse_floats(getattr(args, key), f"--{key}")
        if values is not None:
            pre[key] = values * 3 if len(values) == 1 else values
    return ModelCard(
        task=args.task,
        decoder=args.decoder,
        decoder_params=parse_json_object(args.decoder_params, "--decoder-params"),
        labels=read_labels(args.labels) if args.labels else None,
        preprocess=pre,
    )


def run(args) -> int:
    from optimize.engine import ExportRequest, PartialExport, export
    from optimize.intake import parse_shape
    from optimize.report import text_table

    if args.sign is not None:  # a bad key is refused before minutes of export
        from optimize.signing import load_private_key

        load_private_key(args.sign)
    request = ExportRequest(
        model=args.model,
        targets=args.target,
        out=args.out,
        fmt=args.format,
        calib=args.calib,
        eval=args.eval,
        input_shape=parse_shape(args.input_shape),
        card=card_from_args(args),
        card_path=args.card,
        calib_size=args.calib_size,
        calibration_method=args.calib_method,
        bias_correction=args.bias_correction,
        scheme=args.scheme,
        max_drop=args.max_drop,
        force=args.force,
        guard_tries=args.guard_tries,
        float_tail=args.float_tail,
        score_calibration=args.score_calibration,
        prune=args.prune,
        prune_macs=args.prune_macs,
        finetune=args.finetune,
        opset=args.opset,
        runs=args.runs,
        batch=args.batch,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    try:
        result = export(request)
    except PartialExport as partial:  # the written targets are shown and signed as usual
        result = partial.result
    print(text_table(result.rows))
    print()
    for note in result.notes:
        print(textwrap.fill(note, width=100, initial_indent="- ", subsequent_indent="  "))
    print()
    for text in result.warnings:
        print(f"warning: {text}")
    for r in result.results:
        if r.speed_note:
            print(f"warning: {r.speed_note}")
        if r.guard and not r.guard["passed"]:
            print(f"warning: {r.target.requested} is over its accuracy budget "
                  f"({r.guard_shortfall}), written because of --force")
    for r in result.results:
        print(f"bundle {r.folder}  ({r.target.name})")
        if args.sign is not None:
            from optimize.signing import sign

            identity = sign(r.folder, args.sign, version=args.model_version)
            print(f"  signed: {identity.name} version {identity.version}")
    print(f"report {result.report_md}")
    if not result.unwritten:
        return 0
    for reason in result.unwritten.values():
        print(f"edge-opt: error: {reason}", file=sys.stderr)
    written = ", ".join(r.target.requested for r in result.results)
    print(f"edge-opt: wrote {written}; not written: {', '.join(result.unwritten)} "
          "(fix what is said above and export only those again)", file=sys.stderr)
    return 1

