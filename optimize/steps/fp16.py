"""FP16 weights and activations; inputs and outputs stay float32 so callers see no change.

onnxruntime's own float16 converter, not onnxconverter-common's: the latter types the cast it
adds after a Resize as float where float16 is expected, and onnxruntime refuses to load the
result (YOLO11n, PP-OCRv4: every model with an upsampling neck).

It cannot convert Loop/If/Scan bodies: on SSDLite's in-graph NMS it stops on an assertion
(onnxslim leaves constants in the bodies under their outer names), and with the control-flow
nodes kept float the bodies still read the outer graph's now-fp16 tensors, which onnxruntime
refuses to load. Such a graph is refused before converting.
"""

from __future__ import annotations

from pathlib import Path

from optimize.errors import QuantizationError

CONTROL_FLOW = ("Loop", "If", "Scan")


def run(src: Path, dst: Path, ctx) -> dict:
    import warnings

    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    control = sorted({n.op_type for n in model.graph.node if n.op_type in CONTROL_FLOW})
    if control:
        raise QuantizationError(
            f"fp16 (ONNX) cannot convert a graph with {'/'.join(control)} subgraphs "
            "(onnxruntime's float16 converter breaks them); export the model without in-graph "
            "NMS, or use fp32 (x86 targets: fp16 through --format openvino works)")
    with warnings.catch_warnings():  # it warns once per tiny weight clamped to fp16's range
        warnings.simplefilter("ignore")
        try:
            model = convert_float_to_float16(model, keep_io_types=True)
        except (AssertionError, ValueError, KeyError) as exc:  # its asserts on graphs it misreads
            raise QuantizationError(
                "fp16 (ONNX): onnxruntime's float16 converter cannot convert this graph "
                f"({type(exc).__name__}{': ' + str(exc)[:160] if str(exc) else ''}); use fp32 "
                "(x86 targets: fp16 through --format openvino)") from None
    onnx.save(model, str(dst))
    return {"step": "fp16", "tool": "onnxruntime.transformers float16", "keep_io_types": True}
