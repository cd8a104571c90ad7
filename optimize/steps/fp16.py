"""FP16 weights and activations; inputs and outputs stay float32 so callers see no change.

onnxruntime's own float16 converter, not onnxconverter-common's: the latter types the cast it
adds after a Resize as float where float16 is expected, and onnxruntime refuses to load the
result (YOLO11n, PP-OCRv4: every model with an upsampling neck).

It cannot convert Loop/If/Scan bodies: on SSDLite's in-graph NMS it stops on an assertion
(onnxslim leaves constants in the bodies under their outer names), and with the control-flow
nodes kept float the bodies still read the outer graph's now-fp16 tensors, which onnxruntime
refuses to load. Such a graph is refused before converting.

`emulate` makes the copy the accuracy guard judges: onnxruntime's x86 CPU runs an fp16 graph's
arithmetic in float32 and keeps what flows between its ops in float32 (1.32 here: even its
float16 Max ran in float32 inside a graph), so a value past fp16's 65504 never overflows here,
while TensorRT and CUDA (and CPUs with float16 kernels) store it in float16 and get inf. The
copy computes in float32 and rounds every tensor a node writes to float16, as they store it.
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


def emulate(src: Path, dst: Path) -> None:
    """Write `src` (an fp16 graph) as float32 math with every node's float output rounded
    through float16 (a Cast pair, which onnxruntime keeps): inf where fp16 overflows."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    half, single = TensorProto.FLOAT16, TensorProto.FLOAT

    def widened(tensor):
        return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32),
                                       tensor.name)

    model = onnx.load(str(src))
    graph = model.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == half:
            graph.initializer[i].CopyFrom(widened(init))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == half:
                attr.t.CopyFrom(widened(attr.t))
            elif attr.name in ("to", "dtype") and attr.i == half:
                attr.i = single
    for info in (*graph.value_info, *graph.input, *graph.output):
        if info.type.tensor_type.elem_type == half:
            info.type.tensor_type.elem_type = single
    typed = onnx.shape_inference.infer_shapes(model).graph
    floats = {v.name for v in (*typed.value_info, *typed.input, *typed.output)
              if v.type.tensor_type.elem_type == single}
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for k, name in enumerate(node.output):
            if name not in floats:
                continue
            node.output[k] = f"{name}_fp32"
            nodes += [helper.make_node("Cast", [f"{name}_fp32"], [f"{name}_fp16"], to=half,
                                       name=f"{name}_round_fp16"),
                      helper.make_node("Cast", [f"{name}_fp16"], [name], to=single,
                                       name=f"{name}_back_fp32")]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    onnx.save(model, str(dst))
