"""A small CNN for Fashion-MNIST (1x28x28 grey, 10 classes), sized for channel pruning.

Five conv-bn-relu layers (two at 28x28, two at 14x14, one at 7x7), global average pool and one
linear layer: about 50 M MACs, nearly all in the 3x3 convs, so batch-1 latency on a CPU follows
the channel count rather than per-operator overhead. The widths are multiples of 16 (the
block size of onnxruntime's AVX-512 conv kernels); 30 % pruning rounded to multiples of 8 lands
on 32/64/136, which stays fast.

Input: grey pixels / 255 (mean 0, std 255 in the manifest). Used as

    edge-opt export examples/fashion_mnist/model.py:build --input-shape 1x1x28x28 ...

`build()` loads the checkpoint written by train.py (FASHION_MNIST_CKPT, else
edge-out/fashion_mnist/cnn.pt under the repository root). A checkpoint records the conv widths,
so a pruned and fine-tuned model saved with `save_checkpoint` loads the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHECKPOINT = ROOT / "edge-out" / "fashion_mnist" / "cnn.pt"
ENV_CHECKPOINT = "FASHION_MNIST_CKPT"
WIDTHS = (48, 48, 96, 96, 192)  # output channels of the five convs
NUM_CLASSES = 10


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class FashionCNN(nn.Module):
    def __init__(self, widths: tuple[int, ...] = WIDTHS, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        if len(widths) != 5 or min(widths) < 1:
            raise ValueError(f"widths must be five positive channel counts, got {widths}")
        w1, w2, w3, w4, w5 = widths
        self.features = nn.Sequential(
            _conv_bn_relu(1, w1), _conv_bn_relu(w1, w2), nn.MaxPool2d(2),  # 28x28
            _conv_bn_relu(w2, w3), _conv_bn_relu(w3, w4), nn.MaxPool2d(2),  # 14x14
            _conv_bn_relu(w4, w5),  # 7x7
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(w5, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def widths_of(model: FashionCNN) -> tuple[int, ...]:
    """Current conv widths (they shrink when the model is pruned in place)."""
    return tuple(m.out_channels for m in model.features.modules() if isinstance(m, nn.Conv2d))


def checkpoint_path() -> Path:
    return Path(os.environ.get(ENV_CHECKPOINT) or DEFAULT_CHECKPOINT)


def save_checkpoint(model: FashionCNN, path: Path, **info) -> Path:
    """state_dict + widths (+ whatever `info` says: accuracy, epochs...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"widths": list(widths_of(model)), "state_dict": model.state_dict(), **info}, path)
    return path


def load_checkpoint(path: Path) -> tuple[FashionCNN, dict]:
    if not path.is_file():
        raise FileNotFoundError(
            f"no trained Fashion-MNIST checkpoint at {path}; train one with "
            f"`.venv/bin/python examples/fashion_mnist/train.py` (a few CPU minutes), or set "
            f"{ENV_CHECKPOINT} to a checkpoint written by it"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = FashionCNN(tuple(ckpt["widths"]))
    model.load_state_dict(ckpt["state_dict"])
    info = {k: v for k, v in ckpt.items() if k not in ("state_dict", "widths")}
    return model.eval(), info


def build() -> nn.Module:
    """The trained model, for `edge-opt export examples/fashion_mnist/model.py:build`."""
    return load_checkpoint(checkpoint_path())[0]
