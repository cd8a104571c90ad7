"""Structured pruning: real small models, pruned, exported to ONNX and run in onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from examples.fashion_mnist.model import FashionCNN, widths_of
from optimize.errors import ToolchainError
from optimize.intake import export_torch
from optimize.prune import PruneError, check_args, load_finetune, prune


class DepthwiseBlock(nn.Module):
    """MobileNet-style residual: depthwise 3x3, pointwise 1x1, add."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.pw = nn.Conv2d(c, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.pw(torch.relu(self.bn1(self.dw(x))))))


class TinyResNet(nn.Module):
    """Residual adds, depthwise convs, a stride-2 stage and a softmax behind the classifier."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU())
        self.blocks = nn.Sequential(DepthwiseBlock(32), DepthwiseBlock(32))
        self.down = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU())
        self.block3 = DepthwiseBlock(64)
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block3(self.down(self.blocks(self.stem(x))))
        return torch.softmax(self.head(y.mean((2, 3))), 1)


class TwoHeads(nn.Module):
    """A detector-like output: two conv heads, one behind a sigmoid, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.box = nn.Conv2d(32, 4, 1)
        self.cls = nn.Conv2d(32, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        return torch.cat([self.box(f), torch.sigmoid(self.cls(f))], 1)


def _small_cnn() -> FashionCNN:
    """The Fashion-MNIST CNN at a third of its width: the same graph, cheaper to trace."""
    return _init(FashionCNN((16, 16, 32, 32, 64)))


def _init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, so magnitudes (and outputs) are not uniform."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.2, 1.0)
    return model.eval()


def test_pruning_the_fashion_cnn_cuts_macs_and_keeps_the_classifier():
    model = _init(FashionCNN())
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.rand(1, 1, 28, 28)
    result = prune(model, x, ratio=0.3)

    pruned = result.module
    assert pruned is not model
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # input untouched
    assert widths_of(model) == (48, 48, 96, 96, 192)
    assert all(w % 8 == 0 and w < orig for w, orig in zip(widths_of(pruned), widths_of(model)))
    assert pruned.classifier.out_features == 10
    assert pruned(x).shape == (1, 10)
    assert result.macs_after < result.macs_before * 0.65
    assert result.params_after < result.params_before
    assert 0.25 <= result.channels_removed <= 0.4
    assert result.kept_layers == ("classifier",)
    record = json.loads(json.dumps(result.to_dict()))
    assert record["ratio"] == 0.3 and record["macs_ratio"] == pytest.approx(result.macs_ratio,
                                                                           abs=1e-4)
    assert "module" not in record


def test_residual_and_depthwise_model_prunes_exports_and_runs_in_onnxruntime(tmp_path):
    import onnxruntime as ort

    model = _init(TinyResNet())
    x = torch.rand(1, 3, 32, 32)
    result = prune(model, x, ratio=0.5)
    pruned = result.module
    assert result.macs_after < result.macs_before * 0.5
    assert pruned.head.out_features == 5
    # The add joins each block's input and pointwise output: both shrink together.
    stem = pruned.stem[0].out_channels
    assert pruned.blocks[0].dw.groups == pruned.blocks[0].dw.out_channels == stem
    assert pruned.blocks[1].pw.out_channels == stem < 32

    source = export_torch(pruned, "tiny-resnet", tmp_path, (1, 3, 32, 32))
    assert source.output_shapes == ((1, 5),)
    assert source.export_max_abs_diff < 1e-4
    session = ort.InferenceSession(str(source.onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {source.input_name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, pruned(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(got.sum(), 1.0, atol=1e-5)  # still a softmax over 5 classes


def test_every_output_head_keeps_its_channels():
    result = prune(_init(TwoHeads()), torch.rand(1, 3, 16, 16), ratio=0.5)
    assert set(result.kept_layers) == {"box", "cls"}
    assert result.module.box.out_channels == 4 and result.module.cls.out_channels == 3
    assert result.module(torch.rand(1, 3, 16, 16)).shape == (1, 7, 16, 16)


def test_macs_budget_is_met():
    result = prune(_init(TinyResNet()), torch.rand(1, 3, 16, 16), macs_budget=0.6)
    assert result.macs_after <= 0.6 * result.macs_before
    assert result.macs_after > 0.2 * result.macs_before  # not pruned far past the budget
    assert result.macs_budget == 0.6 and result.to_dict()["macs_budget"] == 0.6
    assert 0 < result.ratio < 0.9
    assert result.module(torch.rand(1, 3, 16, 16)).shape == (1, 5)


def test_unreachable_macs_budget_is_refused_with_the_reason():
    with pytest.raises(PruneError, match="cannot be met"):
        prune(_init(TinyResNet()), torch.rand(1, 3, 16, 16), macs_budget=0.001)


@pytest.mark.parametrize(
    ("ratio", "budget", "message"),
    [
        (0.0, None, "strictly between 0 and 1"),
        (1.0, None, "strictly between 0 and 1"),
        (-0.3, None, "strictly between 0 and 1"),
        (30, None, "strictly between 0 and 1"),
        (None, 0.0, "--prune-macs 0 is out of range"),
        (None, 1.2, "--prune-macs 1.2 is out of range"),
        (0.3, 0.5, "not both"),
        (None, None, "needs a ratio"),
        ("0.3", None, "must be a number"),
    ],
)
def test_bad_ratios_and_budgets_are_refused(ratio, budget, message):
    with pytest.raises(PruneError, match=message) as info:
        check_args(ratio, budget)
    assert isinstance(info.value, ToolchainError)
    with pytest.raises(PruneError, match=message):
        prune(_small_cnn(), torch.rand(1, 1, 28, 28), ratio=ratio, macs_budget=budget)


def test_a_model_with_nothing_but_its_output_layer_is_refused():
    with pytest.raises(PruneError, match="nothing to prune"):
        prune(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), torch.rand(1, 3, 2, 2), ratio=0.3)


def test_an_example_input_the_model_rejects_is_reported():
    with pytest.raises(PruneError, match=r"does not run on an input of shape \(1, 3, 28, 28\)"):
        prune(_small_cnn(), torch.rand(1, 3, 28, 28), ratio=0.3)


def test_finetune_hook_is_called_on_the_pruned_model():
    calls = []

    def hook(model: nn.Module) -> nn.Module:
        calls.append((widths_of(model), model.training))
        with torch.no_grad():
            model.classifier.bias.add_(1.0)
        return model.train()  # a hook may leave its model in training mode

    model = _small_cnn()
    result = prune(model, torch.rand(1, 1, 28, 28), ratio=0.3, finetune=hook)
    assert calls == [(widths_of(result.module), False)]
    assert result.finetune.endswith("hook")
    assert not result.module.training
    assert torch.allclose(result.module.classifier.bias, model.classifier.bias + 1.0)


def test_finetune_hook_may_train_in_place_and_return_none():
    result = prune(_small_cnn(), torch.rand(1, 1, 28, 28), ratio=0.3, finetune=lambda m: None)
    assert result.module(torch.rand(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        (lambda m: 1 / 0, "raised ZeroDivisionError"),
        (lambda m: "model", "returned str"),
        (lambda m: nn.Linear(3, 2), "output shapes changed|does not run"),
    ],
)
def test_broken_finetune_hooks_give_clear_errors(hook, message):
    with pytest.raises(PruneError, match=message):
        prune(_small_cnn(), torch.rand(1, 1, 28, 28), ratio=0.3, finetune=hook)


def test_load_finetune_from_a_file_and_from_a_module(tmp_path):
    (tmp_path / "helpers.py").write_text("STEPS = 3\n")
    (tmp_path / "ft.py").write_text(
        "from helpers import STEPS\n\ndef tune(model):\n    model.steps = STEPS\n    return model\n"
    )
    fn = load_finetune(f"{tmp_path / 'ft.py'}:tune")
    assert fn(nn.Linear(2, 2)).steps == 3
    assert load_finetune("optimize.prune:check_args") is check_args


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ft.py", "give it as file.py:function"),
        ("ft.py:", "give it as file.py:function"),
        ("{tmp}/missing.py:tune", "fine-tune hook .* file .* not found"),
        ("{tmp}/broken.py:tune", "importing fine-tune hook .* failed: SyntaxError"),
        ("{tmp}/ok.py:nope", "has no callable 'nope'"),
        ("no_such_package_xyz.mod:fn", "cannot import 'no_such_package_xyz.mod'"),
    ],
)
def test_bad_finetune_specs_give_clear_errors(tmp_path, spec, message):
    (tmp_path / "broken.py").write_text("def tune(model:\n")
    (tmp_path / "ok.py").write_text("def tune(model):\n    return model\n")
    with pytest.raises(PruneError, match=message):
        load_finetune(spec.format(tmp=tmp_path))


# A PyTorch detector the user builds from the ONNX file with the toolchain's own onnx2torch
# route: torch-pruning's dependency graph raised IndexError deep inside its concat/split
# tracing on YOLO11n, and `edge-opt export --prune` ended in that traceback.
YOLO_FACTORY = '''
from pathlib import Path

import onnx

from optimize import onnx_to_torch


def build():
    model = onnx.load(MODEL)
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, (1, 3, 640, 640)):
        dim.dim_value = value
    path = Path(__file__).with_name("static.onnx")
    onnx.save(model, str(path))
    return onnx_to_torch.convert(path, "prune").module
'''


@pytest.mark.timeout(600)
def test_a_detector_torch_pruning_cannot_trace_is_refused_in_one_line(tmp_path):
    from tests.conftest import error_lines, run_cli
    from tests.optimize.real_models import model_path

    factory = tmp_path / "yolo_torch.py"
    factory.write_text(f"MODEL = {str(model_path('yolo11n_person'))!r}\n{YOLO_FACTORY}")
    result = run_cli("edge-opt", "export", f"{factory}:build", "--input-shape", "1x3x640x640",
                     "--task", "detect", "--decoder", "yolov8", "--prune", "0.3", "-t",
                     "x86-fp32", "--format", "onnx", "--out", tmp_path / "out", "-q")
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert "torch-pruning cannot work out which channels" in line
    assert "without --prune" in line
    assert not (tmp_path / "out").exists()
