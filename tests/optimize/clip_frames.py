"""Frames of the shipped street clip split into calibration and held-out folders, for the
real-model export tests (one split rule, so their figures are comparable)."""

from __future__ import annotations

from pathlib import Path

import cv2

CLIP = Path(__file__).resolve().parents[2] / "examples" / "data" / "vtest_short.avi"


def split_clip(root: Path, held_every: int = 2) -> dict[str, Path]:
    """Every 6th frame from 1 calibrates; of the others, every `held_every`-th (from 0) is
    held out. Returns {"calib": folder, "eval": folder}."""
    folders = {"calib": root / "calib", "eval": root / "eval"}
    for folder in folders.values():
        folder.mkdir(parents=True)
    cap = cv2.VideoCapture(str(CLIP))
    i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        role = "calib" if i % 6 == 1 else "eval" if i % held_every == 0 else None
        if role:
            cv2.imwrite(str(folders[role] / f"vtest_{i:03d}.jpg"), frame)
        i += 1
    return folders
