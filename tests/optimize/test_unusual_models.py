"""Legitimate but unusual ONNX files as other exporters write them: weights in a side file,
non-float32 inputs, tensor names with '/' and ':'. Each either exports to a bundle that loads
and predicts, or is refused in one or two lines with the fix and nothing in --out."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import onnx
import pytest

import edge_sdk
from tests.conftest import run_cli
from tests.optimize.test_cli_hardening import _assert_one_line_error
from tests.optimize.tiny_models import tiny_classifier


def _export(model: Path, out: Path, target: str, data_dir: Path, *extra: str):
    return run_cli("edge-opt", "export", model, "-t", target, "--out", out, "--runs", "3",
                   "--calib", data_dir / "calib", "-q", *extra)


def _predicts(bundle: Path, data_dir: Path) -> None:
    frame = cv2.imread(str(sorted((data_dir / "calib").glob("*.jpg"))[0]))
    result = edge_sdk.load(bundle).predict(frame)
    assert len(result.class_ids) > 0


def _with_input_type(source: Path, path: Path, elem_type: int) -> Path:
    """The tiny classifier with its input declared as another type behind a Cast to float,
    as exporters write uint8-image and fp16 models."""
    model = onnx.load(str(source))
    model.graph.input[0].type.tensor_type.elem_type = elem_type
    for node in model.graph.node:
        node.input[:] = ["input_f" if i == "input" else i for i in node.input]
    model.graph.node.insert(0, onnx.helper.make_node("Cast", ["input"], ["input_f"],
                                                     to=onnx.TensorProto.FLOAT))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(("elem_type", "words"), [
    (onnx.TensorProto.FLOAT16, ["float16", "float32", "fp16"]),
    (onnx.TensorProto.UINT8, ["uint8", "float32 input", "--mean", "--std"]),
    (onnx.TensorProto.INT64, ["int64", "float32 input"]),
], ids=["float16", "uint8", "int64"])
def test_a_non_float32_input_is_refused_in_one_line(tmp_path, data_dir, elem_type, words):
    """Was a traceback from onnxruntime ('Unexpected input data type')."""
    model = _with_input_type(tiny_classifier(tmp_path / "tiny.onnx"), tmp_path / "typed.onnx",
                             elem_type)
    out = tmp_path / "out"
    _assert_one_line_error(_export(model, out, "x86-fp32", data_dir), *words)
    assert not out.exists() or not any(out.iterdir())


def test_float16_weights_behind_float32_inputs_are_refused_in_one_line(tmp_path, data_dir):
    """onnxruntime's own fp16 converter keeping float32 inputs and outputs: was refused as
    'not a valid ONNX model (Nodes in a graph must be topologically sorted...)'."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(tiny_classifier(tmp_path / "tiny.onnx")))
    onnx.save(convert_float_to_float16(model, keep_io_types=True), str(tmp_path / "half.onnx"))
    _assert_one_line_error(_export(tmp_path / "half.onnx", tmp_path / "out", "x86-fp32",
                                   data_dir), "float16 weights", "float32", "x86-fp16")


def test_a_second_input_is_named_with_the_fix(tmp_path, data_dir):
    model = onnx.load(str(tiny_classifier(tmp_path / "tiny.onnx")))
    model.graph.input.append(onnx.helper.make_tensor_value_info("scale", onnx.TensorProto.FLOAT,
                                                                [1]))
    model.graph.node[-1].output[0] = "logits"
    model.graph.node.append(onnx.helper.make_node("Mul", ["logits", "scale"], ["output"]))
    onnx.save(model, str(tmp_path / "two.onnx"))
    _assert_one_line_error(_export(tmp_path / "two.onnx", tmp_path / "out", "x86-fp32",
                                   data_dir), "2 inputs (input, scale)", "only input",
                           "constants")


def test_an_empty_file_says_it_is_empty(tmp_path, data_dir):
    (tmp_path / "model.onnx").write_bytes(b"")
    _assert_one_line_error(_export(tmp_path / "model.onnx", tmp_path / "out", "x86-fp32",
                                   data_dir), "empty", "fetch it again")


def test_external_data_exports_and_a_missing_side_file_is_named(tmp_path, data_dir):
    model = onnx.load(str(tiny_classifier(tmp_path / "tiny.onnx")))
    home = tmp_path / "exported"
    home.mkdir()
    onnx.save(model, str(home / "net.onnx"), save_as_external_data=True,
              location="net.onnx.data", size_threshold=0)
    result = _export(home / "net.onnx", tmp_path / "out", "x86-fp32", data_dir,
                     "--format", "onnx")
    assert result.returncode == 0, result.stderr
    _predicts(tmp_path / "out" / "x86-fp32", data_dir)
    # the recorded source hash covers the weights too (it used to be net.onnx's alone)
    source = json.loads((tmp_path / "out" / "x86-fp32" / "manifest.json").read_text())["source"]
    both = (home / "net.onnx").read_bytes() + (home / "net.onnx.data").read_bytes()
    assert source["sha256"] == hashlib.sha256(both).hexdigest()
    assert source["sha256_covers"] == ["net.onnx", "net.onnx.data"]

    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(home / "net.onnx", moved / "net.onnx")  # the .data file left behind
    out = tmp_path / "out2"
    _assert_one_line_error(_export(moved / "net.onnx", out, "x86-fp32", data_dir),
                           "net.onnx.data", "next to the .onnx")
    assert not out.exists() or not any(out.iterdir())


def test_tensor_names_with_slash_and_colon_reach_a_tflite_int8_bundle(tmp_path, data_dir):
    """TensorFlow-style names ('input:0', 'model/head/logits:0'): the TFLite int8 calibration
    fed the ONNX input name to a signature that has it as 'input_0' (KeyError traceback)."""
    model = onnx.load(str(tiny_classifier(tmp_path / "tiny.onnx")))
    renames = {"input": "input:0", "output": "model/head/logits:0"}
    for node in model.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        node.output[:] = [renames.get(o, o) for o in node.output]
    for value in (*model.graph.input, *model.graph.output):
        value.name = renames[value.name]
    onnx.save(model, str(tmp_path / "tf_names.onnx"))
    result = _export(tmp_path / "tf_names.onnx", tmp_path / "out", "rpi5-int8", data_dir,
                     "--max-drop", "100")
    assert result.returncode == 0, result.stderr
    _predicts(tmp_path / "out" / "rpi5-int8", data_dir)


TORCHSCRIPT_FACTORY = '''
import torch

def build():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 4)).eval()
    torch.jit.trace(net, torch.rand(1, 3, 32, 32)).save(HERE + "/net.pt")
    return torch.jit.load(HERE + "/net.pt")
'''


@pytest.fixture
def torchscript(tmp_path) -> Path:
    (tmp_path / "ts.py").write_text(f"HERE = {str(tmp_path)!r}\n{TORCHSCRIPT_FACTORY}")
    return tmp_path / "ts.py"


def test_a_torchscript_module_from_a_factory_exports_to_onnx_and_tflite(torchscript, tmp_path,
                                                                        data_dir):
    """torch.jit.load's module: was 'torch.onnx.export failed ... Failed to export the model
    with torch.export' (with terminal colour codes) on every target."""
    out = tmp_path / "out"
    result = run_cli("edge-opt", "export", f"{torchscript}:build", "--input-shape", "1x3x32x32",
                     "-t", "x86-fp32", "-t", "rpi5-fp32", "--format", "default", "--out", out,
                     "--runs", "3", "--calib", data_dir / "calib", "-q")
    assert result.returncode == 0, result.stderr
    for target in ("x86-fp32", "rpi5-fp32"):
        _predicts(out / target, data_dir)


def test_a_graph_litert_cannot_take_is_refused_with_the_format_that_works(tmp_path, data_dir):
    """Reflection padding as torch's TorchScript exporter writes it (opset 17) reaches
    litert-torch as shape arithmetic it cannot trace ('unhashable type: non-nested SymInt'):
    the line named no way out."""
    import torch

    net = torch.nn.Sequential(torch.nn.ReflectionPad2d(1), torch.nn.Conv2d(3, 8, 3),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    model = tmp_path / "reflect.onnx"
    torch.onnx.export(net, (torch.rand(1, 3, 32, 32),), str(model), opset_version=17,
                      dynamo=False, input_names=["input"], output_names=["output"])
    out = tmp_path / "out"
    _assert_one_line_error(run_cli("edge-opt", "export", model, "-t", "rpi5-fp32", "--out", out),
                           "rpi5-fp32", "--format onnx")
    assert not out.exists() or not any(out.iterdir())
    result = _export(model, out, "rpi5-fp32", data_dir, "--format", "onnx")
    assert result.returncode == 0, result.stderr
    _predicts(out / "rpi5-fp32", data_dir)


def test_torchscript_refusals_say_what_to_give(torchscript, tmp_path, data_dir):
    prune = run_cli("edge-opt", "export", f"{torchscript}:build", "--input-shape", "1x3x32x32",
                    "-t", "x86-fp32", "--prune", "0.3", "--out", tmp_path / "out")
    _assert_one_line_error(prune, "TorchScript", "--prune", "nn.Module")
    (tmp_path / "net.pt").write_bytes(b"PK\x03\x04 a TorchScript zip")
    direct = run_cli("edge-opt", "export", tmp_path / "net.pt", "-t", "x86-fp32",
                     "--out", tmp_path / "out")
    _assert_one_line_error(direct, "file.py:build", "torch.jit.load")


FAILS_ONLY_WHEN_EXPORTED = '''
import torch

class Refuses(torch.nn.Module):
    def forward(self, x):
        if torch.compiler.is_exporting():
            raise RuntimeError("\\x1b[96mop not exportable here\\x1b[0m, see above")
        return x.mean((2, 3))

def build():
    return Refuses()
'''


def test_a_failed_torch_export_names_its_cause_without_colour_codes(tmp_path):
    """torch.onnx's own first line is a generic 'Failed to export the model with torch.export.
    \\x1b[96mThis is step 1/3\\x1b[0m ... Next steps:', which was all the user saw."""
    (tmp_path / "net.py").write_text(FAILS_ONLY_WHEN_EXPORTED)
    result = run_cli("edge-opt", "export", f"{tmp_path}/net.py:build", "--input-shape",
                     "1x3x32x32", "-t", "x86-fp32", "--out", tmp_path / "out")
    _assert_one_line_error(result, "torch.onnx.export failed", "op not exportable here")
    assert "\x1b" not in result.stderr and "Next steps" not in result.stderr
