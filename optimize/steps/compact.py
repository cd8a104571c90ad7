"""Shrink a quantized ONNX file without changing what it computes or where it runs.

onnxruntime's quantizer writes long generated tensor names
("/_blocks.3/_depthwise_conv/Conv_output_0_QuantizeLinear_Output"); a device does not need
them. Node names stay, so the graph is still readable in Netron. All-zero weight zero points
are kept although ONNX allows leaving them out: onnxruntime 1.23 (the last release for
Python 3.10, as on JetPack 6) refuses a QGemm without them.
"""

from __future__ import annotations

from pathlib import Path


def compact(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        return name if name in keep else short.setdefault(name, f"t{len(short):x}")

    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for node in graph.node:
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    del graph.value_info[:]
    onnx.save(model, str(path))
    return {"tensors_renamed": len(short)}
