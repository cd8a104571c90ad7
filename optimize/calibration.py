"""Calibration and evaluation images: read a folder, preprocess exactly as the device will.

The tensors come from edge_sdk's Preprocessor built from the bundle's own InputSpec, so int8
ranges are measured on the very inputs the runtime feeds the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_sdk.hashing import sha256_file
from edge_sdk.images import IMAGE_SUFFIXES, image_files, read_image
from edge_sdk.manifest import InputSpec
from edge_sdk.preprocess import Preprocessor
from optimize.errors import CalibrationError


@dataclass(frozen=True)
class ImageSet:
    """Preprocessed images of one folder (calibration or evaluation)."""

    folder: Path
    names: tuple[str, ...]
    tensors: tuple[np.ndarray, ...]
    brightness: np.ndarray  # mean grey level per image, for drift statistics
    skipped: tuple[str, ...] = ()  # files that were not readable images
    # sha256 of each image's file: the same photo under two names or folders is one image
    # (evaluation images that are also calibration images are not unseen, engine.py)
    digests: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.tensors)


def list_images(folder: Path, role: str) -> list[Path]:
    if not folder.exists():
        raise CalibrationError(f"{role} folder {folder} does not exist; pass a folder of images")
    if not folder.is_dir():
        raise CalibrationError(f"{role} path {folder} is not a folder; pass a folder of images")
    files = image_files(folder)
    if not files:
        raise CalibrationError(f"{role} folder {folder} has no images (looked for "
                               f"{', '.join(sorted(IMAGE_SUFFIXES))}); add 50-500 typical frames")
    return files


def load_images(folder: Path, spec: InputSpec, role: str = "calibration",
                limit: int | None = None, progress=None) -> ImageSet:
    """Read up to `limit` images (evenly spaced over the sorted list), preprocessed for `spec`."""
    files = list_images(folder, role)
    if limit is not None and len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    pre = Preprocessor(spec)
    names, tensors, brightness, skipped, digests = [], [], [], [], []
    for path in files:
        image = read_image(path)
        if progress is not None:
            progress.update(1)
        if image is None:
            skipped.append(path.name)
            continue
        tensor, _ = pre(image)
        names.append(path.name)
        digests.append(sha256_file(path))
        tensors.append(tensor)
        brightness.append(float(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).mean()))
    if not tensors:
        raise CalibrationError(f"none of the {len(files)} images in {role} folder {folder} could "
                               "be read; they may be corrupt or not images")
    return ImageSet(folder, tuple(names), tuple(tensors), np.asarray(brightness, np.float32),
                    tuple(skipped), tuple(digests))


class OrtCalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over an ImageSet."""

    def __init__(self, images: ImageSet, input_name: str) -> None:
        self.images = images
        self.input_name = input_name
        self._it = iter(images.tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        tensor = next(self._it, None)
        return None if tensor is None else {self.input_name: tensor}

    def rewind(self) -> None:
        self._it = iter(self.images.tensors)

    def __iter__(self):
        return ({self.input_name: t} for t in self.images.tensors)
