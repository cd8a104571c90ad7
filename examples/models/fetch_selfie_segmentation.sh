#!/usr/bin/env bash
# Builds examples/models/selfie_segmentation.onnx: MediaPipe Selfie Segmentation (general,
# 256x256), a person/background semantic-segmentation network with a dense output map, taken from
# the wheel of the PyPI package mediapipe==0.10.14 (Apache-2.0) and converted here to ONNX
# (NCHW, opset 17) by the small converter below: the .tflite carries MediaPipe's custom op
# Convolution2DTransposeBias, which general tflite->ONNX converters do not handle. The converter
# covers just the ops of this graph (fp16 weights are dequantized to fp32) and was checked against
# the TFLite interpreter on real photos (max |diff| < 1e-3). Only the `tflite` flatbuffer schema
# and onnx are needed, in a throwaway venv.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/selfie_segmentation.onnx"
[ -f "$out" ] && exit 0
sha=9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c
wheel=mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet tflite==2.18.0 flatbuffers==25.12.19 onnx==1.23.2 numpy==2.4.6
# The same wheel whatever Python runs this script (only the .tflite inside is used).
"$work/venv/bin/pip" download --quiet --no-deps mediapipe==0.10.14 -d "$work" \
    --only-binary=:all: --python-version 3.11 --platform manylinux_2_17_x86_64
(cd "$work" && unzip -q "$wheel" 'mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite')
tfl="$work/mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
echo "$sha  $tfl" | sha256sum --check --quiet
cat > "$work/tfl2onnx.py" <<'PY'
"""Converts MediaPipe's selfie_segmentation.tflite to ONNX (NCHW). Only the ops this graph uses."""
import sys
import numpy as np, onnx, tflite
from onnx import helper, numpy_helper, TensorProto

src, dst = sys.argv[1], sys.argv[2]
m = tflite.Model.GetRootAsModel(open(src, "rb").read(), 0)
g = m.Subgraphs(0)
codes = []
for i in range(m.OperatorCodesLength()):
    oc = m.OperatorCodes(i)
    codes.append((max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), oc.CustomCode()))
B = tflite.BuiltinOperator

def tname(t): return "t%d" % t
def const(t):
    tt = g.Tensors(t); b = m.Buffers(tt.Buffer())
    if b.DataLength() == 0: return None
    dt = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16, tflite.TensorType.INT32: np.int32}[tt.Type()]
    return np.frombuffer(b.DataAsNumpy().tobytes(), dt).reshape(tt.ShapeAsNumpy())

consts = {}            # tensor index -> fp32 numpy (DEQUANTIZE folded)
nodes, inits = [], []
def add_init(name, arr):
    inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name)); return name
def act(out, fused):
    if fused == tflite.ActivationFunctionType.NONE: return out
    kind = {tflite.ActivationFunctionType.RELU: "Relu"}.get(fused)
    assert kind, fused
    nodes.append(helper.make_node(kind, [out + "_pre"], [out])); return out + "_pre"
def same_or_valid(p): return "SAME_UPPER" if p == tflite.Padding.SAME else "VALID"

for i in range(g.OperatorsLength()):
    op = g.Operators(i)
    code, custom = codes[op.OpcodeIndex()]
    ins = [int(t) for t in op.InputsAsNumpy()]; outs = [int(t) for t in op.OutputsAsNumpy()]
    o = tname(outs[0])
    def opts(cls):
        x = cls(); tab = op.BuiltinOptions(); x.Init(tab.Bytes, tab.Pos); return x
    if code == B.DEQUANTIZE:
        consts[outs[0]] = const(ins[0]).astype(np.float32); continue
    w = lambda t: consts[t] if t in consts else const(t).astype(np.float32)
    if code == B.CONV_2D:
        p = opts(tflite.Conv2DOptions); W = w(ins[1]).transpose(0, 3, 1, 2)
        pre = act(o, p.FusedActivationFunction())
        nodes.append(helper.make_node("Conv", [tname(ins[0]), add_init(o + "_w", W), add_init(o + "_b", w(ins[2]))], [pre],
            strides=[p.StrideH(), p.StrideW()], dilations=[p.DilationHFactor(), p.DilationWFactor()],
            auto_pad=same_or_valid(p.Padding()), kernel_shape=list(W.shape[2:])))
    elif code == B.DEPTHWISE_CONV_2D:
        p = opts(tflite.DepthwiseConv2DOptions); W = w(ins[1]).transpose(3, 0, 1, 2)  # [C,1,kh,kw]
        assert p.DepthMultiplier() == 1
        pre = act(o, p.FusedActivationFunction())
        nodes.append(helper.make_node("Conv", [tname(ins[0]), add_init(o + "_w", W), add_init(o + "_b", w(ins[2]))], [pre],
            strides=[p.StrideH(), p.StrideW()], dilations=[p.DilationHFactor(), p.DilationWFactor()], group=W.shape[0],
            auto_pad=same_or_valid(p.Padding()), kernel_shape=list(W.shape[2:])))
    elif code in (B.ADD, B.MUL):
        p = opts(tflite.AddOptions if code == B.ADD else tflite.MulOptions)
        for t in ins: assert const(t) is None and t not in consts, "constant operand"
        pre = act(o, p.FusedActivationFunction())
        nodes.append(helper.make_node("Add" if code == B.ADD else "Mul", [tname(t) for t in ins], [pre]))
    elif code == B.AVERAGE_POOL_2D:
        p = opts(tflite.Pool2DOptions); pre = act(o, p.FusedActivationFunction())
        nodes.append(helper.make_node("AveragePool", [tname(ins[0])], [pre], kernel_shape=[p.FilterHeight(), p.FilterWidth()],
            strides=[p.StrideH(), p.StrideW()], auto_pad=same_or_valid(p.Padding())))
    elif code == B.HARD_SWISH: nodes.append(helper.make_node("HardSwish", [tname(ins[0])], [o]))
    elif code == B.RELU: nodes.append(helper.make_node("Relu", [tname(ins[0])], [o]))
    elif code == B.LOGISTIC: nodes.append(helper.make_node("Sigmoid", [tname(ins[0])], [o]))
    elif code == B.RESIZE_BILINEAR:
        p = opts(tflite.ResizeBilinearOptions); size = const(ins[1]).astype(np.int64)
        mode = "align_corners" if p.AlignCorners() else ("half_pixel" if p.HalfPixelCenters() else "asymmetric")
        shp = g.Tensors(outs[0]).ShapeAsNumpy()
        nodes.append(helper.make_node("Resize", [tname(ins[0]), "", "", add_init(o + "_size", np.array([shp[0], shp[3], size[0], size[1]], np.int64))], [o],
            mode="linear", coordinate_transformation_mode=mode))
    elif code == B.CUSTOM and custom == b"Convolution2DTransposeBias":
        pad, sw, sh = np.frombuffer(op.CustomOptionsAsNumpy().tobytes()[:12], np.int32)
        assert pad == tflite.Padding.VALID
        W = w(ins[1]).transpose(3, 0, 1, 2)  # [cout,kh,kw,cin] -> [cin,cout,kh,kw]
        nodes.append(helper.make_node("ConvTranspose", [tname(ins[0]), add_init(o + "_w", W), add_init(o + "_b", w(ins[2]))], [o],
            strides=[int(sh), int(sw)], kernel_shape=list(W.shape[2:])))
    else:
        raise SystemExit("unsupported op %s %s" % (code, custom))

inp, out = int(g.InputsAsNumpy()[0]), int(g.OutputsAsNumpy()[0])
ishape = g.Tensors(inp).ShapeAsNumpy().tolist(); oshape = g.Tensors(out).ShapeAsNumpy().tolist()
nodes.insert(0, helper.make_node("Identity", ["image"], [tname(inp)]))
nodes.append(helper.make_node("Identity", [tname(out)], ["mask"]))
graph = helper.make_graph(nodes, "selfie_segmentation", 
    [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, ishape[3], ishape[1], ishape[2]])],
    [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, oshape[3], oshape[1], oshape[2]])], inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tfl2onnx (edge toolkit examples)")
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, dst)
print("ops", len(nodes))
PY
"$work/venv/bin/python" "$work/tfl2onnx.py" "$tfl" "$out" >/dev/null
echo "wrote $out"
