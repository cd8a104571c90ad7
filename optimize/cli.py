"""`edge-opt`: the command line of the offline toolchain. One module per subcommand."""

from __future__ import annotations

import argparse
import sys
import warnings

from edge_sdk.errors import EdgeError, ProviderWarning
from edge_sdk.native_quiet import set_quiet
from optimize.commands import bench, export, profiles, sign

SUBCOMMANDS = (profiles, export, bench, sign)

DESCRIPTION = """\
Optimize a trained vision model for an edge device: quantize it (fp16, int8, int4),
export it in the device's format and write a runnable bundle with a benchmark report.

  edge-opt profiles                         every device and target
  edge-opt export model.onnx --target jetson-int8 --calib photos/
  edge-opt bench out/ --data val/           compare bundles: size, speed, memory, accuracy
  edge-opt keygen --out keys/fleet          signing key pair for a fleet
  edge-opt sign out/x86-int8 --key keys/fleet --version 3
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-opt", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False):  # export, bench: native runtimes' INFO lines too
        set_quiet()
    # The build host times Jetson bundles on the CPU on purpose (the report says so); the
    # runtime's warning about the missing TensorRT provider is for devices.
    warnings.filterwarnings("ignore", category=ProviderWarning)
    try:
        return args.func(args) or 0
    except EdgeError as exc:
        print(f"edge-opt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edge-opt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
