"""Fashion-MNIST from Debian's `dataset-fashion-mnist` (idx files), no download ever.

Reads the four gzip'd idx files into numpy arrays, and writes image trees that `edge-opt`
reads: the 10k labelled test images as one folder per class (for accuracy) and a few hundred
training images (for int8 calibration).

    python examples/fashion_mnist/data.py [--out edge-out/fashion_mnist/data] [--calib 500]
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from pathlib import Path

import numpy as np

DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DIR = "FASHION_MNIST_DIR"  # where the idx files are, if not Debian's folder
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Class order of the dataset. Folder and label names carry the index so that a folder tree
# sorted by name and labels.txt agree with the model's output order.
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
LABELS = tuple(f"{i}_{name.lower().replace('/', '_').replace(' ', '_').replace('-', '')}"
               for i, name in enumerate(CLASSES))
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetMissingError(FileNotFoundError):
    """The idx files are not installed; the message says how to get them."""


def dataset_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or DATASET_DIR)


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (gzip'd or not): 2 zero bytes, dtype code, rank, big-endian dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic {raw[:4].hex()})")
    rank = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=rank, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = 4 + 4 * rank + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: {len(raw)} bytes, expected {expected} for shape {dims}")
    data = np.frombuffer(raw, dtype, offset=4 + 4 * rank).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def load(split: str, folder: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of the "train" or "test" split."""
    if split not in FILES:
        raise ValueError(f"split must be one of {', '.join(FILES)}, not {split!r}")
    folder = folder or dataset_dir()
    paths = [folder / name for name in FILES[split]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetMissingError(
            f"Fashion-MNIST file {missing[0]} not found; install Debian's package with "
            f"`apt-get install dataset-fashion-mnist` (or point {ENV_DIR} at a folder holding "
            f"{', '.join(FILES[split])})"
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(f"{folder}: {split} images {images.shape} and labels {labels.shape} "
                         "do not match")
    return images, labels


def write_image_tree(images: np.ndarray, labels: np.ndarray, out: Path,
                     indices: np.ndarray | None = None) -> int:
    """Write PNGs as out/<label>/<index>.png plus out/labels.txt; returns the count written."""
    import cv2

    indices = np.arange(len(images)) if indices is None else np.asarray(indices)
    out.mkdir(parents=True, exist_ok=True)
    for label in LABELS:
        (out / label).mkdir(exist_ok=True)
    for i in indices:
        path = out / LABELS[int(labels[i])] / f"{int(i):05d}.png"
        if not cv2.imwrite(str(path), images[i]):
            raise OSError(f"could not write {path}")
    (out / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return len(indices)


def calibration_indices(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """`count` indices spread evenly over the classes, chosen with a fixed seed."""
    rng = np.random.default_rng(seed)
    per_class = np.array_split(np.arange(count), len(LABELS))
    picks = [rng.choice(np.flatnonzero(labels == c), len(n), replace=False)
             for c, n in enumerate(per_class)]
    return np.sort(np.concatenate(picks))


def export_trees(out: Path, calib: int = 500, folder: Path | None = None) -> dict[str, Path]:
    """out/test (the 10k labelled test images) and out/calib (`calib` training images)."""
    test_images, test_labels = load("test", folder)
    write_image_tree(test_images, test_labels, out / "test")
    train_images, train_labels = load("train", folder)
    write_image_tree(train_images, train_labels, out / "calib",
                     calibration_indices(train_labels, calib))
    return {"test": out / "test", "calib": out / "calib"}


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=root / "edge-out" / "fashion_mnist" / "data")
    parser.add_argument("--calib", type=int, default=500, help="calibration images to write")
    args = parser.parse_args(argv)
    try:
        trees = export_trees(args.out, args.calib)
    except DatasetMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, path in trees.items():
        count = sum(1 for _ in path.rglob("*.png"))
        print(f"{name}: {count} images in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
