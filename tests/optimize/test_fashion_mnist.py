"""The Fashion-MNIST example: Debian's idx files, the image trees edge-opt reads, training."""

from __future__ import annotations

import gzip

import cv2
import numpy as np
import pytest
import torch

from edge_sdk.manifest import InputSpec
from examples.fashion_mnist import data
from examples.fashion_mnist.model import (
    ENV_CHECKPOINT,
    FashionCNN,
    load_checkpoint,
    save_checkpoint,
    widths_of,
)
from examples.fashion_mnist.train import evaluate, to_tensor, train
from optimize.calibration import load_images
from optimize.errors import ModelSourceError
from optimize.intake import load_torch_module
from optimize.prune import load_finetune, prune
from tests.conftest import ROOT

needs_dataset = pytest.mark.skipif(
    not all((data.DATASET_DIR / f).is_file() for pair in data.FILES.values() for f in pair),
    reason=f"Fashion-MNIST is not in {data.DATASET_DIR}: `apt-get install dataset-fashion-mnist` "
           "(make test does it)",
)
GRAY = InputSpec(name="input", shape=(1, 1, 28, 28), color="GRAY", mean=(0.0,), std=(255.0,))


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    return data.load("test")


@needs_dataset
def test_reads_the_debian_idx_files(test_split):
    images, labels = test_split
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [1000] * 10
    assert 60 < images.mean() < 90  # dark background, bright clothes
    train_images, train_labels = data.load("train")
    assert train_images.shape == (60000, 28, 28)
    assert np.bincount(train_labels).tolist() == [6000] * 10


def test_missing_dataset_says_how_to_install_it(tmp_path):
    with pytest.raises(data.DatasetMissingError, match="apt-get install dataset-fashion-mnist"):
        data.load("test", tmp_path)


def test_read_idx_refuses_a_file_that_is_not_idx(tmp_path):
    bad = tmp_path / "x.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"PK\x03\x04 not an idx file")
    with pytest.raises(ValueError, match="not an idx file"):
        data.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))  # says 5 bytes, has 2
    with pytest.raises(ValueError, match="expected 13"):
        data.read_idx(short)


@needs_dataset
def test_image_tree_reads_back_through_the_device_preprocessing(tmp_path, test_split):
    images, labels = test_split
    picks = np.arange(0, 10000, 500)
    assert data.write_image_tree(images, labels, tmp_path, picks) == len(picks)
    assert (tmp_path / "labels.txt").read_text().split() == list(data.LABELS)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == list(data.LABELS)
    first = tmp_path / data.LABELS[labels[0]] / "00000.png"
    np.testing.assert_array_equal(cv2.imread(str(first), cv2.IMREAD_UNCHANGED), images[0])

    loaded = load_images(tmp_path, GRAY, "evaluation")
    assert len(loaded) == len(picks)
    for name, tensor in zip(loaded.names, loaded.tensors):
        index = int(name.split(".")[0])
        assert tensor.shape == (1, 1, 28, 28)
        np.testing.assert_allclose(tensor[0], to_tensor(images[index:index + 1])[0].numpy(),
                                   atol=1e-6)  # exactly what the model was trained on


@needs_dataset
def test_calibration_picks_are_balanced_and_seeded(test_split):
    _, labels = test_split
    picks = data.calibration_indices(labels, 500)
    assert len(set(picks.tolist())) == 500
    assert np.bincount(labels[picks], minlength=10).tolist() == [50] * 10
    np.testing.assert_array_equal(picks, data.calibration_indices(labels, 500))


@needs_dataset
def test_a_few_training_steps_reduce_the_loss(test_split):
    images, labels = test_split
    model = FashionCNN((16, 16, 32, 32, 64))
    losses = train(model, images[:1024], labels[:1024], epochs=1, batch_size=32, lr=0.05,
                   max_steps=20)
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3
    assert 0 <= evaluate(model, images[-200:], labels[-200:]) <= 1


def test_build_without_a_checkpoint_says_how_to_train(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CHECKPOINT, str(tmp_path / "none.pt"))
    with pytest.raises(ModelSourceError, match="examples/fashion_mnist/train.py"):
        load_torch_module(f"{ROOT / 'examples' / 'fashion_mnist' / 'model.py'}:build")


def test_a_pruned_checkpoint_loads_through_build(tmp_path, monkeypatch):
    torch.manual_seed(0)
    pruned = prune(FashionCNN((16, 16, 32, 32, 64)), torch.rand(1, 1, 28, 28), ratio=0.5).module
    path = save_checkpoint(pruned, tmp_path / "pruned.pt", test_top1=0.5)
    model, info = load_checkpoint(path)
    assert widths_of(model) == widths_of(pruned) == (8, 8, 16, 16, 32)
    assert info["test_top1"] == 0.5
    monkeypatch.setenv(ENV_CHECKPOINT, str(path))
    built = load_torch_module(f"{ROOT / 'examples' / 'fashion_mnist' / 'model.py'}:build")
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(built(x), pruned.eval()(x))


@needs_dataset
def test_the_example_finetune_hook_loads_from_its_path_and_trains():
    hook = load_finetune(f"{ROOT / 'examples' / 'fashion_mnist' / 'train.py'}:finetune")
    model = FashionCNN((8, 8, 16, 16, 32))
    before = model.classifier.weight.detach().clone()
    tuned = hook(model, steps=2)
    assert tuned is model and not tuned.training
    assert not torch.equal(before, tuned.classifier.weight)
