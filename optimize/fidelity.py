"""How faithful a bundle is to the FP32 model, in its task's terms, on held-out images.

The held-out images are split in two by photo (a photo's crops and mirror stay together):
the accuracy guard chooses calibration methods and float layers on the first part, and the
figures a report publishes come from the second, which the search never saw. Below
`GUARD_MIN_IMAGES` the guard does not run and every held-out image counts for the report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import edge_sdk
from optimize.calibration import ImageSet
from optimize.measure import fit_input
from optimize.tasks import Fidelity, Outputs, Scoring, get_task
from optimize.tasks.base import view_group

GUARD_MIN_IMAGES = 20  # below this, one flipped image moves agreement by > 5 points


@dataclass(frozen=True)
class HeldOut:
    """The held-out images, split: `search` for the guard (None when it cannot run), `report`
    for every published figure."""

    search: ImageSet | None
    report: ImageSet
    # how many of each part are also calibration images (same file contents): their figures
    # are not from unseen images, and the report says so (engine.mark_calibration_overlap)
    report_in_calib: int = 0
    search_in_calib: int = 0


def split_held_out(images: ImageSet | None, guarded: bool = True) -> HeldOut | None:
    """Alternate photos between the two parts (sorted by name, so the split is stable).
    Without a guarded (int8/int4) target nothing searches, so every image is scored."""
    if images is None:
        return None
    groups = sorted({view_group(n) for n in images.names})
    if not guarded or len(images) < GUARD_MIN_IMAGES or len(groups) < 2:
        return HeldOut(None, images)
    search_groups = set(groups[0::2])
    search = [i for i, n in enumerate(images.names) if view_group(n) in search_groups]
    report = [i for i, n in enumerate(images.names) if view_group(n) not in search_groups]
    return HeldOut(subset(images, search), subset(images, report))


def subset(images: ImageSet, idx: list[int]) -> ImageSet:
    return ImageSet(images.folder, tuple(images.names[i] for i in idx),
                    tuple(images.tensors[i] for i in idx), images.brightness[idx],
                    digests=tuple(images.digests[i] for i in idx) if images.digests else ())


def all_outputs(model: edge_sdk.Model, images: ImageSet) -> Outputs:
    """Every output of the model for every image, float32, in manifest order."""
    spec = model.manifest.inputs[0]
    names = [o.name for o in model.manifest.outputs]
    out = []
    for tensor in images.tensors:
        result = model.infer({spec.name: fit_input(tensor, spec)})
        out.append([np.asarray(result[n], np.float32) for n in names])
    return out


def judge(model: edge_sdk.Model, images: ImageSet, reference: Outputs) -> Fidelity:
    """The bundle's fidelity to the FP32 outputs `reference` on `images`."""
    manifest = model.manifest
    got = [[in_reference_layout(r, g) for r, g in zip(ref, out)]
           for ref, out in zip(reference, all_outputs(model, images))]
    scoring = Scoring(task=manifest.task, labels=manifest.labels,
                      image_names=images.names,
                      output_names=tuple(o.name for o in manifest.outputs))
    return get_task(manifest.task.type).fidelity(reference, got, scoring)


def in_reference_layout(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """`got` in the reference's layout: a TFLite conversion returns maps channels-last."""
    if got.shape == ref.shape or got.size != ref.size:
        return got
    if got.ndim == 4 and got.transpose(0, 3, 1, 2).shape == ref.shape:
        return np.ascontiguousarray(got.transpose(0, 3, 1, 2))
    return got.reshape(ref.shape)
