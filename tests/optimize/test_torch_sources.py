"""What a PyTorch user hands over (a pickled model, a torch.export .pt2, a model with several
inputs or outputs): exported and matching torch on a real image, or refused in one line that
names the fix."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import edge_sdk
from tests.conftest import run_cli
from tests.optimize.test_cli_hardening import _assert_one_line_error

torch = pytest.importorskip("torch")

NETS = '''
import torch
from torch import nn

HERE = {here!r}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 5)


class Plain(Net):
    def forward(self, x):
        return self.fc(self.body(x))


class Named(Net):
    def forward(self, x):
        f = self.body(x)
        return {{"logits": self.fc(f), "embedding": f}}


class Pair(Net):
    def forward(self, x):
        f = self.body(x)
        return self.fc(f), f


class TwoInputs(Net):
    def forward(self, x, scale):
        return self.fc(self.body(x)) * scale


def _built(cls):
    torch.manual_seed(0)
    net = cls()
    net.body[1].running_mean.uniform_(-0.5, 0.5)
    return net.eval()


def named():
    return _built(Named)


def pair():
    return _built(Pair)


def two_inputs():
    return _built(TwoInputs)


def half():
    return _built(Plain).half()


def wrong_weights():
    net = Plain()
    net.load_state_dict({{"fc.weight": torch.zeros(5, 8)}})
    return net


def scripted_dict():
    return torch.jit.trace(_built(Named), torch.rand(1, 3, 32, 32), strict=False)


def pickled():
    return torch.load(HERE + "/whole.pt")


def program():
    return torch.export.load(HERE + "/plain.pt2")


def program_module():
    return torch.export.load(HERE + "/plain.pt2").module()
'''


@pytest.fixture
def nets(tmp_path) -> Path:
    """The factories' file, a whole pickled model and a torch.export program beside it."""
    path = tmp_path / "nets.py"
    path.write_text(NETS.format(here=str(tmp_path)))
    sys.path.insert(0, str(tmp_path))
    try:
        import nets as module

        plain = module._built(module.Plain)
        torch.save(plain, tmp_path / "whole.pt")
        program = torch.export.export(plain, (torch.rand(1, 3, 32, 32),))
        torch.export.save(program, tmp_path / "plain.pt2")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("nets", None)
    return path


def _export(spec: str, out: Path, data_dir: Path, *targets: str):
    target_args = [arg for t in targets for arg in ("-t", t)]
    return run_cli("edge-opt", "export", spec, "--input-shape", "1x3x32x32", *target_args,
                   "--format", "default", "--out", out, "--runs", "3",
                   "--calib", data_dir / "calib", "-q")


def _torch_outputs(module, bundle: Path, data_dir: Path) -> tuple[dict, list[np.ndarray]]:
    """The bundle's outputs by name on a real photo, and torch's on the same tensor."""
    from torch.utils import _pytree

    model = edge_sdk.load(bundle)
    feeds, _ = model.preprocess(cv2.imread(str(data_dir / "eval" / "baboon.jpg")))
    (x,) = feeds.values()
    if model.input_spec.layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    with torch.no_grad():
        want = module(torch.from_numpy(np.ascontiguousarray(x)))
    return model.infer(feeds), [t.numpy() for t in _pytree.tree_leaves(want)]


def _factory(nets: Path, name: str):
    sys.path.insert(0, str(nets.parent))
    try:
        import nets as module

        return getattr(module, name)()
    finally:
        sys.path.remove(str(nets.parent))
        sys.modules.pop("nets", None)


@pytest.mark.parametrize(("factory", "words"), [
    ("pickled", ("weights_only=False", "trust", "state_dict")),
    ("two_inputs", ("2 inputs", "x, scale", "wrapper")),
    ("program", ("ExportedProgram", ".module()")),
    ("half", ("float16 weights", "model.float()")),
    ("wrong_weights", ("Missing key(s)", "fc.bias")),
    ("scripted_dict", ("DictConstruct", "return a tuple", "nn.Module")),
], ids=["whole pickle, torch.load's default", "forward(x, scale)", "ExportedProgram",
        "a .half() model", "load_state_dict's missing keys", "TorchScript returning a dict"])
def test_a_factory_returning_what_cannot_be_exported_is_told_the_fix(nets, tmp_path, factory,
                                                                       words):
    """Were: torch.load's dozen lines of weights_only advice; 'does not accept input shape
    ...: missing 1 required positional argument: scale; check --input-shape'; 'returned
    ExportedProgram, not a torch.nn.Module'; 'does not accept input shape ...: expected scalar
    type Float but found Half; check --input-shape'; load_state_dict's first line only, which
    ends in a colon before the keys it names; TorchScript's 'Exporting the operator
    prim::DictConstruct ... is not supported', naming no way out."""
    result = run_cli("edge-opt", "export", f"{nets}:{factory}", "--input-shape", "1x3x32x32",
                     "-t", "x86-fp32", "--out", tmp_path / "out")
    _assert_one_line_error(result, *words)


def test_a_pickled_model_loaded_when_the_file_is_imported_is_told_the_fix(nets, tmp_path):
    """torch.load at the top of the factory's file: its dozen lines of advice came through
    'importing model factory file ... failed'."""
    (tmp_path / "top.py").write_text(f"import torch\nMODEL = torch.load({str(nets.parent)!r} "
                                     "+ '/whole.pt')\n\ndef build():\n    return MODEL\n")
    result = run_cli("edge-opt", "export", f"{tmp_path}/top.py:build", "--input-shape",
                     "1x3x32x32", "-t", "x86-fp32", "--out", tmp_path / "out")
    _assert_one_line_error(result, "importing", "weights_only=False", "trust")


def test_a_pt2_file_given_directly_says_how_to_load_it(nets, tmp_path):
    """Was 'unsupported model file', naming no way to give a torch.export program."""
    result = run_cli("edge-opt", "export", nets.parent / "plain.pt2", "-t", "x86-fp32",
                     "--out", tmp_path / "out")
    _assert_one_line_error(result, "file.py:build", "torch.export.load(path).module()")


def test_dict_outputs_are_named_by_their_keys_and_match_torch(nets, tmp_path, data_dir):
    """A dict-returning model stopped export with a traceback ('dict' object has no attribute
    'numpy'); now each format's bundle names its outputs by the keys and gives torch's values."""
    out = tmp_path / "out"
    result = _export(f"{nets}:named", out, data_dir, "x86-fp32", "rpi5-fp32")
    assert result.returncode == 0, result.stderr
    module = _factory(nets, "named")
    for target in ("x86-fp32", "rpi5-fp32"):
        got, want = _torch_outputs(module, out / target, data_dir)
        assert list(got) == ["logits", "embedding"]
        for have, expected in zip(got.values(), want):
            np.testing.assert_allclose(have, expected, atol=1e-4)


def test_a_tuples_outputs_are_all_named_and_checked(nets, tmp_path, data_dir):
    """The second output was named after a torch op ('view') and never compared with torch."""
    out = tmp_path / "out"
    result = _export(f"{nets}:pair", out, data_dir, "x86-fp32")
    assert result.returncode == 0, result.stderr
    got, want = _torch_outputs(_factory(nets, "pair"), out / "x86-fp32", data_dir)
    assert list(got) == ["output", "output_1"]
    for have, expected in zip(got.values(), want):
        np.testing.assert_allclose(have, expected, atol=1e-4)


def test_a_torch_export_program_exports_to_onnx_and_tflite(nets, tmp_path, data_dir):
    """torch.export.load(path).module() raises NotImplementedError on eval(), which export
    called: a traceback on every target."""
    out = tmp_path / "out"
    result = _export(f"{nets}:program_module", out, data_dir, "x86-fp32", "rpi5-fp32")
    assert result.returncode == 0, result.stderr
    module = torch.export.load(nets.parent / "plain.pt2").module()
    for target in ("x86-fp32", "rpi5-fp32"):
        got, want = _torch_outputs(module, out / target, data_dir)
        np.testing.assert_allclose(got["output"], want[0], atol=1e-4)


def test_pruning_a_torch_export_program_says_what_to_give(nets, tmp_path):
    """Was 'nothing to prune: the model has no conv or linear layer', under a FutureWarning:
    the program's layers are graph ops that torch-pruning cannot see."""
    result = run_cli("edge-opt", "export", f"{nets}:program_module", "--input-shape",
                     "1x3x32x32", "-t", "x86-fp32", "--prune", "0.3", "--out", tmp_path / "out")
    _assert_one_line_error(result, "torch.export", "--prune", "nn.Module")


def test_a_second_output_reaches_a_tflite_int8_bundle(nets, tmp_path, data_dir):
    """The features output is int8 inside the model: ai-edge-quantizer appends a DEQUANTIZE as
    the graph output but its signature kept the int8 tensor, so rpi5-int8 of every such model
    failed ('model.tflite has no output named output (it has ..._output_dequant, ...)')."""
    out = tmp_path / "out"
    result = run_cli("edge-opt", "export", f"{nets}:pair", "--input-shape", "1x3x32x32",
                     "-t", "rpi5-int8", "--out", out, "--runs", "3", "--calib",
                     data_dir / "calib", "--eval", data_dir / "eval", "-q")
    assert result.returncode == 0, result.stderr
    model = edge_sdk.load(out / "rpi5-int8")
    feeds, _ = model.preprocess(cv2.imread(str(data_dir / "eval" / "baboon.jpg")))
    (x,) = feeds.values()
    scale, zero_point = model.input_spec.quant
    x = ((x.astype(np.float32) - zero_point) * scale).transpose(0, 3, 1, 2)
    with torch.no_grad():
        want = _factory(nets, "pair")(torch.from_numpy(np.ascontiguousarray(x)))
    got = model.infer(feeds)
    assert list(got) == ["output", "output_1"]
    for have, expected in zip(got.values(), want):
        expected = expected.numpy()
        assert have.dtype == np.float32
        np.testing.assert_allclose(have, expected, atol=0.05 * np.abs(expected).max())
