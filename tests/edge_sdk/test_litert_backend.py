"""The LiteRT backend on real (tiny, hand-written) .tflite models run by the real interpreter:
integer outputs dequantized, integer inputs fed as the manifest says, outputs in manifest
order by name, manifests that do not describe the model refused, and the interpreter a
device already has (tflite-runtime, tensorflow.lite) accepted and named."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import edge_sdk
from edge_sdk.errors import BackendError
from edge_sdk.hashing import sha256_file
from edge_sdk.manifest import FileEntry, InputSpec, Manifest, OutputSpec, RuntimeSpec, TaskSpec

schema = pytest.importorskip("ai_edge_litert.schema_py_generated")

QUANT = (0.1, 3)  # (scale, zero point) of the int8 tensors below
SHAPE = (1, 1, 2, 2)  # an NHWC "image", as the manifest requires rank 4


def _tensor(name: str, dtype: str, quant: tuple[float, int] | None = None, shape=SHAPE):
    t = schema.TensorT()
    t.name, t.shape, t.buffer = name, list(shape), 0
    t.type = {"float32": schema.TensorType.FLOAT32, "int8": schema.TensorType.INT8}[dtype]
    if quant is not None:
        t.quantization = schema.QuantizationParametersT()
        t.quantization.scale, t.quantization.zeroPoint = [quant[0]], [quant[1]]
    return t


def _tflite(tensors: list, ops: list[tuple[int, list[int], list[int]]], inputs: list[int],
            outputs: list[int]) -> bytes:
    """A one-subgraph flatbuffer with builtin ops (code, input ids, output ids)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = schema.ModelT()
    model.version, model.buffers = 3, [schema.BufferT()]
    codes = sorted({code for code, _, _ in ops})
    model.operatorCodes = []
    for code in codes:
        oc = schema.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
        model.operatorCodes.append(oc)
    graph = schema.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, inputs, outputs, []
    for code, ins, outs in ops:
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = codes.index(code), ins, outs
        graph.operators.append(op)
    model.subgraphs = [graph]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _quantize_and_relu() -> bytes:
    """x (float32) -> QUANTIZE -> "q" (int8, QUANT);  x -> RELU -> "r" (float32)."""
    op = schema.BuiltinOperator
    return _tflite([_tensor("x", "float32"), _tensor("q", "int8", QUANT),
                    _tensor("r", "float32")],
                   [(op.QUANTIZE, [0], [1]), (op.RELU, [0], [2])], [0], [1, 2])


def _dequantize() -> bytes:
    """x (int8, QUANT) -> DEQUANTIZE -> "y" (float32)."""
    return _tflite([_tensor("x", "int8", QUANT), _tensor("y", "float32")],
                   [(schema.BuiltinOperator.DEQUANTIZE, [0], [1])], [0], [1])


def _bundle(folder, model: bytes, inputs: tuple[InputSpec, ...],
            outputs: tuple[OutputSpec, ...], threads: int = 2):
    """A bundle folder written the way optimize/bundle.py writes one."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.tflite").write_bytes(model)
    Manifest(target="rpi5-int8", profile="rpi5", precision="int8", format="tflite",
             runtime=RuntimeSpec(backend="litert", threads=threads),
             files={"model": FileEntry("model.tflite", sha256_file(folder / "model.tflite"))},
             inputs=inputs, outputs=outputs, task=TaskSpec("classify", "topk")).write(folder)
    return folder


def _input(dtype: str = "float32", quant=None) -> InputSpec:
    return InputSpec("x", SHAPE, dtype=dtype, layout="NHWC", color="RGB", mean=(0.0,),
                     std=(255.0,), quant=quant)


X = np.array([-1.0, 0.25, 1.0, 5.0], np.float32).reshape(SHAPE)


def test_integer_outputs_are_dequantized_and_ordered_as_the_manifest_says(tmp_path):
    # the manifest lists the model's outputs in the other order
    outputs = (OutputSpec("r", SHAPE), OutputSpec("q", SHAPE, "int8", QUANT))
    model = edge_sdk.load(_bundle(tmp_path, _quantize_and_relu(), (_input(),), outputs))
    out = model.infer({"x": X})
    assert list(out) == ["r", "q"]
    assert out["q"].dtype == np.float32, "decoders must get floats"
    np.testing.assert_allclose(out["r"], np.maximum(X, 0))
    np.testing.assert_allclose(out["q"], X, atol=QUANT[0] / 2 + 1e-6)
    assert model.backend.output_names == ["r", "q"]


def test_int8_input_is_fed_as_the_manifest_quantizes_it(tmp_path):
    model = edge_sdk.load(_bundle(tmp_path, _dequantize(), (_input("int8", QUANT),),
                                  (OutputSpec("y", SHAPE),)))
    q = np.array([-128, 0, 3, 127], np.int8).reshape(SHAPE)
    np.testing.assert_allclose(model.infer({"x": q})["y"], (q.astype(np.float32) - 3) * 0.1,
                               rtol=1e-6)


def test_backend_says_which_runtime_and_threads(tmp_path):
    folder = _bundle(tmp_path, _dequantize(), (_input("int8", QUANT),), (OutputSpec("y", SHAPE),),
                     threads=1)
    name = edge_sdk.load(folder).backend.name
    assert name.startswith("ai-edge-litert 2.3.0") and name.endswith("[XNNPACK, 1 thread]")
    assert edge_sdk.load(folder, threads=2).backend.name.endswith("[XNNPACK, 2 threads]")


@pytest.mark.parametrize("model, inputs, outputs, words", [
    (_dequantize, (_input("float32"),), (OutputSpec("y", SHAPE),),
     ["int8", "manifest says float32"]),
    (_dequantize, (_input("int8", (0.2, 3)),), (OutputSpec("y", SHAPE),),
     ["scale 0.1", "zero point 3"]),
    (_quantize_and_relu, (_input(),), (OutputSpec("q", SHAPE, "int8"), OutputSpec("r", SHAPE)),
     ["'q'", "manifest says None"]),
    (_quantize_and_relu, (_input(),), (OutputSpec("logits", SHAPE), OutputSpec("r", SHAPE)),
     ["no output named 'logits'", "q, r"]),
], ids=["input dtype", "input quantization", "output quantization", "output name"])
def test_a_manifest_that_does_not_describe_the_model_is_refused(tmp_path, model, inputs, outputs,
                                                                words):
    with pytest.raises(BackendError) as err:
        edge_sdk.load(_bundle(tmp_path, model(), inputs, outputs))
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "re-export" in str(err.value)


def _only(monkeypatch, dist: str) -> None:
    """Make `dist` the only TFLite interpreter this process can import (it is the real
    ai-edge-litert interpreter under the module name that runtime uses)."""
    from ai_edge_litert.interpreter import Interpreter

    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    if dist == "tflite-runtime":
        monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
        module = types.ModuleType("tflite_runtime.interpreter")
        module.Interpreter = Interpreter
        monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", module)
    elif dist == "tensorflow":
        tf = types.ModuleType("tensorflow")
        tf.__version__ = "2.21.0"
        tf.lite = types.SimpleNamespace(Interpreter=Interpreter)
        monkeypatch.setitem(sys.modules, "tensorflow", tf)


@pytest.mark.parametrize("dist", ["tflite-runtime", "tensorflow"])
def test_the_interpreter_the_device_already_has_is_used_and_named(tmp_path, monkeypatch, dist):
    folder = _bundle(tmp_path, _quantize_and_relu(), (_input(),),
                     (OutputSpec("q", SHAPE, "int8", QUANT), OutputSpec("r", SHAPE)))
    _only(monkeypatch, dist)
    model = edge_sdk.load(folder)
    assert model.backend.name.startswith(dist)
    np.testing.assert_allclose(model.infer({"x": X})["q"], X, atol=QUANT[0] / 2 + 1e-6)


def test_no_interpreter_at_all_says_what_to_install(tmp_path, monkeypatch):
    folder = _bundle(tmp_path, _dequantize(), (_input("int8", QUANT),), (OutputSpec("y", SHAPE),))
    _only(monkeypatch, "none")
    monkeypatch.delitem(sys.modules, "edge_sdk.backends.litert", raising=False)
    with pytest.raises(BackendError, match=r"pip install ai-edge-litert==2\.3\.0"):
        edge_sdk.load(folder)


DELEGATE_INFO = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def _stderr_of(code: str, quiet: bool) -> str:
    """What a fresh process (the delegate's line is printed once per process) writes to fd 2."""
    import os
    import subprocess

    from edge_sdk.native_quiet import QUIET_ENV

    env = {k: v for k, v in os.environ.items() if k != QUIET_ENV}
    if quiet:
        env[QUIET_ENV] = "1"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    return proc.stderr


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_drops_the_delegate_info_line_only_when_asked(tmp_path, quiet):
    folder = _bundle(tmp_path, _quantize_and_relu(), (_input(),),
                     (OutputSpec("q", SHAPE, "int8", QUANT), OutputSpec("r", SHAPE)))
    err = _stderr_of(f"import edge_sdk; edge_sdk.load({str(folder)!r})", quiet)
    assert (DELEGATE_INFO in err) is not quiet, err


def test_quiet_keeps_everything_else_the_runtime_writes():
    """Warnings and errors written to fd 2 inside the quiet block still reach stderr, in order,
    also when the block raises."""
    code = ("import os\nfrom edge_sdk.native_quiet import native_info_dropped\n"
            "try:\n    with native_info_dropped():\n"
            "        os.write(2, b'ERROR: first\\n" + DELEGATE_INFO + "\\nWARNING: second\\n')\n"
            "        raise ValueError('boom')\nexcept ValueError:\n    pass\n"
            "os.write(2, b'after\\n')\n")
    err = _stderr_of(code, quiet=True)
    assert err.splitlines() == ["ERROR: first", "WARNING: second", "after"], err
