"""SSDLite without its in-graph resize loop and NMS: the network int8 can quantize.

The TensorFlow graph (`ssdlite_mobilenet_v2_coco.onnx`) resizes inside a Loop and runs
BatchMultiClassNonMaxSuppression inside another; onnxruntime's quantizer cannot keep Loop
bodies intact, so edge-opt refuses int8 for it and says to export the model without in-graph
NMS. This is that export: the graph from the resized image (float RGB NCHW 1x3x300x300, 0..255,
as the loop hands it on; the scaling to [-1, 1] stays in the graph) to the per-anchor boxes
(1, 1917, 4: normalized y1, x1, y2, x2, anchors applied) and sigmoid scores (1, 1917, 2:
background, person; this frozen graph detects people only), which
edge_sdk's `ssd` decoder turns into detections with OpenCV's NMS.

    python examples/models/cut_ssdlite.py examples/models/ssdlite_mobilenet_v2_coco.onnx \
        examples/models/ssdlite_mobilenet_v2_coco_raw.onnx
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnx.utils
from onnx import TensorProto, helper, numpy_helper

IMAGE = "Preprocessor/map/TensorArrayStack/TensorArrayGatherV3:0"  # the Loop's resized image
BOXES = "Postprocessor/Decode/transpose_1:0"  # (1917, 4) decoded, normalized yxyx
SCORES = "Postprocessor/convert_scores:0"  # (1, 1917, 91) after the sigmoid
SIZE = 300


def cut(src: str, dst: str) -> None:
    model = onnx.shape_inference.infer_shapes(onnx.load(src))
    for info in model.graph.value_info:
        if info.name == IMAGE:
            info.CopyFrom(helper.make_tensor_value_info(IMAGE, TensorProto.FLOAT,
                                                        [1, 3, SIZE, SIZE]))  # fmt: skip
    sub = onnx.utils.Extractor(model).extract_model([IMAGE], [BOXES, SCORES])
    graph = sub.graph
    loops = [n.name for n in graph.node if n.op_type == "Loop"]
    if loops:
        sys.exit(f"the cut still holds Loop nodes {loops}: the model is not the one expected")
    for node in graph.node:  # the new names: image in, boxes and scores out
        node.input[:] = ["image" if i == IMAGE else i for i in node.input]
        node.output[:] = ["scores" if o == SCORES else o for o in node.output]
    graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "batch_axis"))
    graph.node.append(helper.make_node("Unsqueeze", [BOXES, "batch_axis"], ["boxes"]))
    del graph.input[:], graph.output[:]
    graph.input.append(helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                     [1, 3, SIZE, SIZE]))  # fmt: skip
    graph.output.extend([
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, None, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, None, None]),
    ])  # fmt: skip
    del graph.value_info[:]
    sub.doc_string = ("SSDLite-MobileNetV2 (COCO), cut out of ssdlite_mobilenet_v2_coco.onnx "
                      "between its resize loop and its NMS loop by examples/models/"
                      "cut_ssdlite.py; decode with edge_sdk's ssd decoder (background=True)")
    sub = onnx.shape_inference.infer_shapes(sub)
    onnx.checker.check_model(sub)
    onnx.save(sub, dst)


if __name__ == "__main__":
    cut(sys.argv[1], sys.argv[2])
