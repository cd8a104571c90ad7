"""`edge-opt bench (MODEL --target T ... | BUNDLE ...) --data DIR`: compare precisions/formats."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from edge_sdk.manifest import MANIFEST_NAME
from optimize.bench.dataset import FORMATS
from optimize.bundle import check_out_folder, check_report
from optimize.commands import export
from optimize.errors import ToolchainError

EPILOG = """\
examples:
  edge-opt bench model.onnx --target x86-fp32 --target x86-int8 --target rpi5-int8 \\
      --calib calib/ --data val/ --out bench/
  edge-opt bench out/x86-fp32 out/x86-int8 out/jetson-int8 --data val/ --out bench/
  edge-opt bench out/ --data val/             # every bundle in an export's output folder

--data decides what accuracy means:
  val/<class name>/*.jpg               top-1 / top-5 (class names from the bundle's labels.txt,
                                       or class ids 0, 1, ...)
  images/ + labels/ (YOLO txt)         mAP@0.5 and mAP@0.5:0.95 (pycocotools)
  a COCO json with images/             the same
  plain images                         agreement with the FP32 model (the fp32 bundle among the
                                       inputs, or one built for the first target's profile)

Each bundle is measured in a process of its own: size, latency p50/p95/p99 at batch 1 and
throughput at the profile's threads (capped at this host's cores), pre+post-processing time,
peak memory, start-up time (load to first result), accuracy. OUT gets report.md, report.json
and report.html (self-contained, with charts); bundles built from a model go to OUT/bundles.
"""

# export's flags that say how to build bundles from a model; bench takes them from export's own
# parser (see _add_build_flags) so the two commands can never drift apart.
BUILD_FLAGS = ("format", "input_shape", "opset", "calib", "calib_size", "scheme", "calib_method",
               "bias_correction", "card", "resize", "crop_fraction", "color", "layout", "mean",
               "std", "task", "decoder", "decoder_params", "labels", "max_drop", "guard_tries",
               "prune", "prune_macs", "finetune", "overwrite")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        # one usage line: an argparse error is then two lines, not a screenful of flags
        usage="edge-opt bench (MODEL --target TARGET ... | BUNDLE ...) [--data DIR] [options]",
        help="compare bundles (or build them from a model): size, latency, memory, accuracy",
        description="Benchmark every precision and format of a model on your data, with an "
                    "HTML report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="MODEL_OR_BUNDLE",
                   help="bundle folders (or a folder of bundles), or one model (.onnx, "
                        "file.py:fn) with --target")
    p.add_argument("--target", "-t", action="append", metavar="TARGET",
                   help="build a bundle for PROFILE-PRECISION from the model; repeatable")
    p.add_argument("--data", type=Path, metavar="DIR",
                   help="labelled images (class folders, YOLO txt, COCO json) or plain images")
    p.add_argument("--data-format", choices=FORMATS, default="auto",
                   help="how --data is laid out (default: auto-detect)")
    p.add_argument("--out", "-o", type=Path, default=Path("edge-bench"),
                   help="output folder (default: edge-bench)")
    p.add_argument("--runs", type=export.positive_int, default=50,
                   help="timed runs per bundle (default 50)")
    p.add_argument("--max-images", type=export.positive_int, metavar="N",
                   help="use at most N images of --data (evenly spaced)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="compile cache folder, as a device sets EDGE_SDK_CACHE_DIR (OpenVINO "
                        "reuses compiled models from it): startup ms then shows a warm start")
    p.add_argument("--trust-bundle-code", action="store_true",
                   help="run the Python decoder a bundle carries (made with export --decoder "
                        "file.py:Name); only for bundles you built or trust (bundles built here "
                        "from a model with --decoder are trusted)")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress lines or bars on stderr (errors are still shown)")
    _add_build_flags(p)
    p.set_defaults(func=run)


def _add_build_flags(p: argparse.ArgumentParser) -> None:
    """Register export's BUILD_FLAGS on `p`, in one group.

    The Action objects are shared, the way argparse's own `parents=` shares them; parents= would
    also bring export's positional model and its required --target.
    """
    root = argparse.ArgumentParser(add_help=False)
    sub = root.add_subparsers()
    export.add_parser(sub)
    source = sub.choices["export"]
    group = p.add_argument_group(
        "building bundles from a model (with --target; as in edge-opt export)")
    found: dict[str, tuple[str, object]] = {}  # dest -> (flag as typed, default)
    for action in source._actions:
        if action.dest in BUILD_FLAGS:
            if action.dest == "overwrite":  # bench's own folders: the parser is private to us
                action.help = ("replace OUT/report.* and OUT/bundles/TARGET even when edge-opt "
                               "did not write them (by default only its own are replaced)")
            group._add_action(action)
            found[action.dest] = (action.option_strings[0], action.default)
    p.set_defaults(build_defaults=found)
    missing = set(BUILD_FLAGS) - set(found)
    if missing:  # export renamed a flag: a programming error, caught by the tests
        raise RuntimeError(f"edge-opt export no longer has {sorted(missing)}; update BUILD_FLAGS")


def _build_flags_given(args) -> list[str]:
    """Build flags set to something other than their default (--overwrite also covers OUT's
    reports, so it applies without --target too)."""
    return [flag for d, (flag, default) in args.build_defaults.items()
            if d != "overwrite" and getattr(args, d) != default]


def _check_reports(out: Path, overwrite: bool) -> None:
    """OUT can take report.md/.json/.html: not a bundle folder (its files belong to its export),
    and no report there that bench did not write, unless --overwrite."""
    from optimize.bench.report import TITLES

    check_out_folder(out)
    if (out / MANIFEST_NAME).exists():
        raise ToolchainError(f"--out {out} is a bundle folder; bench writes its reports "
                             "elsewhere: choose another --out, e.g. --out edge-bench")
    for name, title in TITLES.items():
        check_report(out / name, title, overwrite, writer="edge-opt bench")


def run(args) -> int:
    from optimize.bench.report import text_table
    from optimize.bench.runner import BenchRequest, bench

    _check_reports(args.out, args.overwrite)  # before any work: the reports are written last
    progress = not args.quiet
    build = None
    if args.target:
        build = _export_request(args, progress)
    else:
        given = _build_flags_given(args)
        if given:
            raise ToolchainError(f"{', '.join(given)} only apply when building bundles from a "
                                 "model with --target; the bundles given are already built")
    result = bench(BenchRequest(
        inputs=args.inputs, data=args.data, out=args.out, build=build,
        data_format=args.data_format, runs=args.runs, max_images=args.max_images,
        progress=progress, cache_dir=args.cache_dir,
        trust_code=args.trust_bundle_code or (build is not None and args.decoder is not None)))
    print(text_table(result.rows))
    print()
    for note in result.notes:
        print(textwrap.fill(note, width=100, initial_indent="- ", subsequent_indent="  "))
    print()
    for path in (result.report_md, result.report_json, result.report_html):
        print(f"report {path}")
    return 0


def _export_request(args, progress: bool):
    """The model and --target flags as the engine's ExportRequest (bundles go to OUT/bundles)."""
    from optimize.engine import ExportRequest
    from optimize.intake import parse_shape

    if len(args.inputs) != 1:
        raise ToolchainError("--target builds bundles from one model: pass the model alone, or "
                             "drop --target to compare bundles that exist")
    model = args.inputs[0]
    if (Path(model) / MANIFEST_NAME).is_file() or Path(model).is_dir():
        raise ToolchainError(f"{model} is a folder, not a model: drop --target to bench existing "
                             "bundles, or pass an .onnx file or file.py:factory")
    return ExportRequest(
        model=model, targets=args.target, out=args.out / "bundles", fmt=args.format,
        calib=args.calib, eval=None, input_shape=parse_shape(args.input_shape),
        card=export.card_from_args(args), card_path=args.card, calib_size=args.calib_size,
        calibration_method=args.calib_method, bias_correction=args.bias_correction,
        scheme=args.scheme, opset=args.opset,
        max_drop=args.max_drop, guard_tries=args.guard_tries,
        prune=args.prune, prune_macs=args.prune_macs, finetune=args.finetune,
        force=True,  # a bundle over its accuracy budget is still compared (and marked)
        runs=args.runs, progress=progress, overwrite=args.overwrite)
