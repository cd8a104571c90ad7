"""The result types that flow through the runtime: classifiers, detectors (with keypoints or
instance masks in `data` for pose and instance segmentation), semantic maps, raw tensors.

`Detections` follows supervision's design: parallel numpy arrays, checked once, filtered by
indexing (`dets[dets.scores > 0.5]`), never mutated by later stages (they return new objects).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np


@dataclass(frozen=True)
class Classification:
    """Top-k classes of one image, best first."""

    class_ids: np.ndarray  # (k,) int64
    scores: np.ndarray  # (k,) float32, probabilities if the decoder applied softmax
    labels: tuple[str, ...] = ()

    @property
    def top1(self) -> int:
        return int(self.class_ids[0])

    def to_dict(self) -> dict:
        return {
            "class_ids": self.class_ids.tolist(),
            "scores": [round(float(s), 6) for s in self.scores],
            "labels": list(self.labels),
        }


@dataclass(frozen=True)
class Detections:
    """N boxes in original-frame pixel coordinates (x1, y1, x2, y2)."""

    xyxy: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    class_ids: np.ndarray  # (N,) int64
    tracker_ids: np.ndarray | None = None  # (N,) int64, -1 for untracked
    labels: tuple[str, ...] | None = None  # (N,) names, if the bundle has labels
    data: dict[str, np.ndarray] = field(default_factory=dict)  # extra per-box arrays

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        if self.xyxy.shape != (n, 4):
            raise ValueError(f"xyxy must have shape (N, 4), got {self.xyxy.shape}")
        for name in ("scores", "class_ids"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {getattr(self, name).shape}")
        if self.tracker_ids is not None and self.tracker_ids.shape != (n,):
            raise ValueError(f"tracker_ids must have shape ({n},)")
        if self.labels is not None and len(self.labels) != n:
            raise ValueError(f"labels must have {n} entries")
        for key, value in self.data.items():
            if len(value) != n:
                raise ValueError(f"data[{key!r}] must have {n} rows")

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
        )

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: np.ndarray | slice | int) -> Detections:
        """Filter by boolean mask, index array or slice; returns a new Detections."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        index = np.asarray(index) if not isinstance(index, slice) else index
        labels = None
        if self.labels is not None:
            labels = tuple(np.asarray(self.labels, dtype=object)[index].tolist())
        return Detections(
            xyxy=self.xyxy[index],
            scores=self.scores[index],
            class_ids=self.class_ids[index],
            tracker_ids=None if self.tracker_ids is None else self.tracker_ids[index],
            labels=labels,
            data={k: v[index] for k, v in self.data.items()},
        )

    @property
    def keypoints(self) -> np.ndarray | None:
        """(N, K, 3) x, y, visibility in frame pixels, for pose models (else None)."""
        return self.data.get("keypoints")

    @property
    def masks(self) -> np.ndarray | None:
        """(N, H, W) bool masks of the frame, for instance segmentation (else None)."""
        return self.data.get("masks")

    def with_tracker_ids(self, tracker_ids: np.ndarray) -> Detections:
        return replace(self, tracker_ids=np.asarray(tracker_ids, np.int64))

    @classmethod
    def merge(cls, parts: list[Detections]) -> Detections:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        has_tracks = all(p.tracker_ids is not None for p in parts)
        has_labels = all(p.labels is not None for p in parts)
        keys = set.intersection(*(set(p.data) for p in parts))
        return cls(
            xyxy=np.concatenate([p.xyxy for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            class_ids=np.concatenate([p.class_ids for p in parts]),
            tracker_ids=np.concatenate([p.tracker_ids for p in parts]) if has_tracks else None,
            labels=tuple(x for p in parts for x in p.labels) if has_labels else None,
            data={k: np.concatenate([p.data[k] for p in parts]) for k in keys},
        )

    def to_dict(self) -> dict:
        out = {
            "xyxy": np.round(self.xyxy, 2).tolist(),
            "scores": [round(float(s), 4) for s in self.scores],
            "class_ids": self.class_ids.tolist(),
        }
        if self.tracker_ids is not None:
            out["tracker_ids"] = self.tracker_ids.tolist()
        if self.labels is not None:
            out["labels"] = list(self.labels)
        if self.keypoints is not None:
            out["keypoints"] = np.round(self.keypoints.astype(np.float64), 2).tolist()
        if self.masks is not None:  # a mask per box would swamp a log: its outline instead
            out["mask_polygons"] = [mask_polygon(m) for m in self.masks]
        if "quad" in self.data:  # rotated boxes (text lines): 4 corners each
            out["quads"] = np.round(self.data["quad"].astype(np.float64), 1).tolist()
        return out


def mask_polygon(mask: np.ndarray) -> list[list[int]]:
    """The outline of a mask's largest region as [[x, y], ...] frame pixels ([] if empty)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    return max(contours, key=cv2.contourArea).reshape(-1, 2).tolist()


@dataclass(frozen=True)
class Segmentation:
    """A semantic map: the class of every frame pixel (`class_map`, (H, W) int32).

    JSON carries each present class's pixel count and share of the frame, not the map itself.
    """

    class_map: np.ndarray
    labels: tuple[str, ...] = ()

    def areas(self) -> dict[int, int]:
        ids, counts = np.unique(self.class_map, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts)}

    def to_dict(self) -> dict:
        total = max(1, self.class_map.size)
        classes = []
        for cid, pixels in self.areas().items():
            entry = {"class_id": cid, "pixels": pixels, "fraction": round(pixels / total, 5)}
            if 0 <= cid < len(self.labels):
                entry["label"] = self.labels[cid]
            classes.append(entry)
        return {"mask_shape": list(self.class_map.shape), "classes": classes}


@dataclass(frozen=True)
class RawOutputs:
    """The model's outputs by name, for a task edge_sdk does not interpret (task `raw`).

    JSON carries each tensor's shape, dtype and summary statistics, and the values of small
    tensors (at most `INLINE_VALUES` numbers): a dense map per frame would swamp a log.
    """

    tensors: dict[str, np.ndarray]

    INLINE_VALUES = 64

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def to_dict(self) -> dict:
        out = {}
        for name, t in self.tensors.items():
            entry: dict = {"shape": list(t.shape), "dtype": str(t.dtype)}
            if t.size:
                f = t.astype(np.float64)
                entry.update(min=round(float(f.min()), 6), max=round(float(f.max()), 6),
                             mean=round(float(f.mean()), 6))
            if t.size <= self.INLINE_VALUES:
                entry["values"] = np.round(t.astype(np.float64), 6).reshape(-1).tolist()
            out[name] = entry
        return {"outputs": out}
