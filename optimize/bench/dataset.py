"""The --data folder of `edge-opt bench`: labelled images, or bare images for FP32 agreement.

Layouts understood (`--data-format auto` tells them apart):

    classes  DATA/<class>/*.jpg        a folder per class, named as in the bundle's labels.txt
                                       (or by class id: DATA/0/, DATA/1/, ...)
    yolo     DATA/images/x.jpg + DATA/labels/x.txt (or x.txt next to x.jpg), one
             `class cx cy w h` line per box, fractions of the image size
    coco     a COCO json (DATA/*.json or DATA/annotations/*.json, or --data FILE.json) with
             images, annotations (bbox = x, y, w, h in pixels) and categories, matched to
             labels.txt by name; without a name to match, category ids are class ids and must
             count from 0 (COCO's own count from 1)
    images   any other folder of images: no labels, accuracy is agreement with the FP32 model

Reading happens in two steps so mistakes are found before any heavy work: `scan` reads the
folder as written (class names, YOLO ids, COCO category names), `resolve` maps those to the
model's class ids once the bundles' labels are known.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_sdk.images import IMAGE_SUFFIXES, image_files
from optimize.bench.errors import DatasetError

FORMATS = ("auto", "classes", "yolo", "coco", "images")
TASK_OF_KIND = {"classes": "classify", "yolo": "detect", "coco": "detect", "images": None}
KIND_NAMES = {"classes": "class-folder", "yolo": "YOLO", "coco": "COCO", "images": "no"}


@dataclass(frozen=True)
class RawSample:
    """One image and its labels as written in the data (names, not yet model class ids)."""

    path: Path
    key: str | None = None  # classes: the class folder's name
    boxes: np.ndarray | None = None  # detection: (N, 4) x1 y1 x2 y2 (pixels, or fractions)
    box_keys: tuple[str, ...] = ()  # detection: class of each box as written (YOLO id, COCO name)
    crowd: np.ndarray | None = None  # COCO iscrowd flags


@dataclass(frozen=True)
class RawDataset:
    root: Path
    kind: str  # one of FORMATS except "auto"
    samples: tuple[RawSample, ...]
    normalized: bool = False  # YOLO boxes are fractions of the image size
    category_ids: dict[str, int] = field(default_factory=dict)  # COCO name -> category id

    @property
    def labelled(self) -> bool:
        return self.kind != "images"


@dataclass(frozen=True)
class Sample:
    """One image with ground truth in the model's class ids."""

    path: Path
    class_id: int | None = None
    boxes: np.ndarray | None = None  # (N, 4) x1 y1 x2 y2
    box_classes: np.ndarray | None = None  # (N,) int64
    crowd: np.ndarray | None = None  # (N,) bool

    def pixel_boxes(self, width: int, height: int, normalized: bool) -> np.ndarray:
        """Boxes in image pixels; YOLO's fractions need the image size, known once it is read."""
        boxes = np.zeros((0, 4), np.float64) if self.boxes is None else self.boxes
        return boxes * [width, height, width, height] if normalized else boxes


@dataclass(frozen=True)
class Dataset:
    root: Path
    kind: str
    samples: tuple[Sample, ...]
    normalized: bool = False
    class_map: dict[str, int] = field(default_factory=dict)  # name/id as written -> class id
    mapping: str = ""  # how names were matched to class ids, for the report

    @property
    def labelled(self) -> bool:
        return self.kind != "images"

    @property
    def task(self) -> str | None:
        return TASK_OF_KIND[self.kind]

    def describe(self) -> str:
        n = len(self.samples)
        if self.kind == "classes":
            return f"{n} images in {len(self.class_map)} class folders ({self.mapping})"
        if self.kind in ("yolo", "coco"):
            boxes = sum(0 if s.boxes is None else len(s.boxes) for s in self.samples)
            return (f"{n} images with {boxes} boxes of {len(self.class_map)} classes "
                    f"({self.kind}; {self.mapping})")
        return f"{n} images without labels"


def scan(path: Path | None, fmt: str = "auto", limit: int | None = None) -> RawDataset:
    """Read the data folder's layout and labels; every problem is a one-line DatasetError."""
    if path is None:
        raise DatasetError("no --data: pass a folder of images (class folders, YOLO txt or COCO "
                           "json labels give accuracy; bare images give agreement with FP32)")
    if fmt not in FORMATS:
        raise DatasetError(f"--data-format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not path.exists():
        raise DatasetError(f"--data {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".json" or fmt not in ("auto", "coco"):
            raise DatasetError(f"--data {path} is a file; pass a folder of images (or a COCO "
                               ".json annotation file)")
        return _limit(_read_coco(path, path.parent), limit)
    images = _list_images(path)
    if not images:
        raise DatasetError(f"--data folder {path} has no images (looked for "
                           f"{', '.join(sorted(IMAGE_SUFFIXES))} in it and its subfolders)")
    if fmt == "auto":
        fmt = _guess_format(path, images)
    if fmt == "coco":
        return _limit(_read_coco(_coco_file(path, required=True), path), limit)
    if fmt == "yolo":
        return _limit(_read_yolo_set(path, images), limit)
    if fmt == "classes":
        return _limit(_read_classes(path, images), limit)
    return _limit(RawDataset(path, "images", tuple(RawSample(p) for p in images)), limit)


def resolve(raw: RawDataset, labels: tuple[str, ...], task: str) -> Dataset:
    """Map the names in the data to the model's class ids (`labels` = the bundle's labels.txt)."""
    want = TASK_OF_KIND[raw.kind]
    if want is not None and want != task:
        what = {"classify": "classify images", "detect": "detect objects"}
        fix = "YOLO txt or COCO json boxes" if task == "detect" else "a folder per class"
        raise DatasetError(f"--data {raw.root} holds {KIND_NAMES[raw.kind]} labels (for models "
                           f"that {what[want]}) but the bundles {what.get(task, task)}; give "
                           f"{fix}")
    if raw.kind == "images":
        return Dataset(raw.root, raw.kind, tuple(Sample(s.path) for s in raw.samples))
    if raw.kind == "classes":
        keys = sorted({s.key for s in raw.samples})
        class_map, how = _match(keys, labels, "class folder", raw.root)
        samples = tuple(Sample(s.path, class_id=class_map[s.key]) for s in raw.samples)
        return Dataset(raw.root, raw.kind, samples, class_map=class_map, mapping=how)
    if not any(s.box_keys for s in raw.samples):
        # no ground truth: mAP is undefined, and the report would call accuracy "against the
        # labels" with no labelled figure in it
        raise DatasetError(f"--data {raw.root}: its {KIND_NAMES[raw.kind]} labels hold no box "
                           f"in any of its {len(raw.samples)} images, so there is no mAP to "
                           "measure; add the boxes, or pass the images alone to compare with FP32")
    keys = sorted({k for s in raw.samples for k in s.box_keys})
    if raw.kind == "yolo":
        class_map = {k: int(k) for k in keys}
        _check_ids(class_map, labels, raw.root)
        how = "YOLO class ids"
    elif labels:
        class_map, how = _match(keys, labels, "COCO category", raw.root)
        names = {_normalize(label) for label in labels}
        _check_zero_based(raw, [k for k in keys if _normalize(k) not in names], labels)
    else:
        _check_zero_based(raw, keys, labels)
        class_map = {k: raw.category_ids[k] for k in keys}
        how = ("COCO category ids taken as class ids, from 0 (the bundle has no labels.txt to "
               "match names)")
    samples = tuple(
        Sample(s.path, boxes=s.boxes,
               box_classes=np.array([class_map[k] for k in s.box_keys], np.int64),
               crowd=s.crowd)
        for s in raw.samples)
    return Dataset(raw.root, raw.kind, samples, raw.normalized, class_map, how)


def _normalize(name: str) -> str:
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip().lower()


def _match(keys: list[str], labels: tuple[str, ...], what: str, root: Path
           ) -> tuple[dict[str, int], str]:
    """Class names to ids: by label (case, `_` and spacing ignored), else by integer name."""
    index: dict[str, int] = {}
    for i, label in enumerate(labels):
        index.setdefault(_normalize(label), i)
    out: dict[str, int] = {}
    unknown = []
    for key in keys:
        if _normalize(key) in index:
            out[key] = index[_normalize(key)]
        elif key.isdigit():
            out[key] = int(key)
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        if labels:
            hint = (f"names must be in the bundle's labels.txt ({len(labels)} classes, e.g. "
                    f"{', '.join(repr(x) for x in labels[:3])}) or class ids")
        else:
            hint = "the bundle has no labels.txt, so name them by class id (0, 1, ...)"
        raise DatasetError(f"{len(unknown)} {what} name(s) in {root} match no class of the "
                           f"model: {shown}; {hint}")
    _check_ids(out, labels, root)
    by_name = sum(_normalize(k) in index for k in keys)
    how = "matched to labels.txt by name" if by_name == len(keys) else (
        "class ids" if by_name == 0 else "by name or class id")
    return out, how


def _check_zero_based(raw: RawDataset, by_id: list[str], labels: tuple[str, ...]) -> None:
    """COCO categories matched by id must count from 0, as a model's class ids do. COCO's own
    count from 1 (1 = person) and skip numbers (80 classes in ids 1-90): taken as class ids,
    the model's class 0 was scored against category 1 and mAP came out near 0."""
    ids = sorted({v for v in raw.category_ids.values() if isinstance(v, int)})
    if not by_id or not ids or ids[0] == 0:
        return
    first = next(k for k, v in raw.category_ids.items() if v == ids[0])
    why = ("the bundle has no labels.txt to match their names" if not labels else
           f"{len(by_id)} of them have no name in the bundle's labels.txt")
    raise DatasetError(f"--data {raw.root}: its COCO category ids start at {ids[0]} "
                       f"({first!r}), the model's class ids at 0, and {why}; export the model "
                       "with --labels FILE (class names in class-id order, as the categories "
                       "name them), or number the categories from 0 as the model's classes")


def _check_ids(class_map: dict[str, int], labels: tuple[str, ...], root: Path) -> None:
    if labels:
        bad = sorted(k for k, v in class_map.items() if v >= len(labels))
        if bad:
            raise DatasetError(f"class id(s) {', '.join(bad[:5])} in {root} are beyond the "
                               f"model's {len(labels)} classes (ids 0-{len(labels) - 1})")


def _list_images(folder: Path) -> list[Path]:
    return image_files(folder, hidden=False)


def _limit(raw: RawDataset, limit: int | None) -> RawDataset:
    """At most `limit` samples, evenly spaced so every class folder keeps a share."""
    if not raw.samples:
        raise DatasetError(f"--data {raw.root} has no labelled images")
    if limit is None or len(raw.samples) <= limit:
        return raw
    idx = np.unique(np.linspace(0, len(raw.samples) - 1, limit).round().astype(int))
    return RawDataset(raw.root, raw.kind, tuple(raw.samples[i] for i in idx), raw.normalized,
                      raw.category_ids)


def _guess_format(root: Path, images: list[Path]) -> str:
    if _coco_file(root, required=False) is not None:
        return "coco"
    if any(_yolo_label(p) is not None for p in images):
        return "yolo"
    # Every image inside a subfolder, none loose: a folder per class.
    return "images" if any(p.parent == root for p in images) else "classes"


def _coco_file(root: Path, required: bool) -> Path | None:
    found, broken = [], []
    for candidate in sorted([*root.glob("*.json"), *root.glob("annotations/*.json")]):
        try:
            data = json.loads(candidate.read_text())
        except (OSError, ValueError) as exc:
            broken.append((candidate, exc))
            continue
        if isinstance(data, dict) and "images" in data and "annotations" in data:
            found.append(candidate)
    if broken and not found:  # most likely the annotations, cut short or hand-edited
        path, exc = broken[0]
        raise DatasetError(f"{path} cannot be read as JSON ({_first_line(exc)}); fix or remove "
                           "it (COCO annotations must be valid JSON)")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DatasetError(f"--data {root} has several COCO files ({names}); pass the one to "
                           "use: --data FILE.json")
    if not found and required:
        raise DatasetError(f"--data {root}: no COCO json (with images and annotations) in it or "
                           "in annotations/")
    return found[0] if found else None


def _yolo_label(image: Path) -> Path | None:
    """Ultralytics' rule (.../images/... -> .../labels/...), or x.txt next to x.jpg."""
    candidates = [image.with_suffix(".txt")]
    s = str(image)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in s:
        candidates.insert(0, Path(sb.join(s.rsplit(sa, 1))).with_suffix(".txt"))
    return next((c for c in candidates if c.is_file()), None)


def _read_yolo_set(root: Path, images: list[Path]) -> RawDataset:
    """Images without a label file are background images (no boxes), as in Ultralytics."""
    label_files = [_yolo_label(p) for p in images]
    if not any(label_files):
        raise DatasetError(f"--data {root}: no YOLO label files (labels/x.txt for images/x.jpg, "
                           "or x.txt next to x.jpg)")
    samples = []
    for image, txt in zip(images, label_files):
        boxes, keys = _read_yolo(txt) if txt else (np.zeros((0, 4)), ())
        samples.append(RawSample(image, boxes=boxes, box_keys=keys))
    return RawDataset(root, "yolo", tuple(samples), normalized=True)


def _read_yolo(txt: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """`class cx cy w h` per line (fractions); a polygon line (segmentation) gives its bbox."""
    boxes, keys = [], []
    for n, line in enumerate(txt.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            values = [float(v) for v in parts]
        except ValueError:
            values = []
        ok = len(values) == 5 or (len(values) >= 7 and len(values) % 2 == 1)
        if not ok or not values[0].is_integer() or values[0] < 0:
            raise DatasetError(f"{txt}:{n}: expected 'class cx cy w h' (class id, then fractions "
                               f"of the image size), got {line.strip()!r}")
        if len(values) == 5:
            _, cx, cy, w, h = values
            boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        else:
            xs, ys = values[1::2], values[2::2]
            boxes.append([min(xs), min(ys), max(xs), max(ys)])
        keys.append(str(int(values[0])))
    return np.asarray(boxes, np.float64).reshape(-1, 4), tuple(keys)


def _read_coco(path: Path, root: Path) -> RawDataset:
    try:
        data = json.loads(path.read_text())
        cats = {c["id"]: str(c.get("name", c["id"])) for c in data.get("categories", [])}
        images = {im["id"]: im["file_name"] for im in data["images"]}
        anns: dict[object, list[dict]] = {i: [] for i in images}
        for a in data["annotations"]:
            if a["image_id"] not in anns:
                raise DatasetError(f"{path}: annotation {a.get('id')!r} is for image_id "
                                   f"{a['image_id']!r}, which is not among its images; fix "
                                   "the image_id or add the image")
            anns[a["image_id"]].append(a)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path} is not a COCO detection file (images, annotations with "
                           f"image_id/bbox/category_id, categories): {exc!r}") from None
    _check_coco_fields(path, images, data["annotations"])
    samples, missing = [], []
    for image_id, name in images.items():
        image = next((d / name for d in (path.parent, path.parent / "images", root,
                                         root / "images", path.parent.parent / "images")
                      if (d / name).is_file()), None)
        if image is None:
            missing.append(name)
            continue
        rows = anns[image_id]
        xywh = np.asarray([a["bbox"] for a in rows], np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        keys = tuple(cats.get(a["category_id"], str(a["category_id"])) for a in rows)
        crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in rows], bool)
        samples.append(RawSample(image, boxes=boxes, box_keys=keys, crowd=crowd))
    if missing:
        raise DatasetError(f"{len(missing)} image(s) named in {path} are missing (first: "
                           f"{missing[0]}); looked next to the json and in images/")
    category_ids = {name: cid for cid, name in cats.items()}
    for s in samples:
        for k in s.box_keys:
            category_ids.setdefault(k, int(k) if k.isdigit() else -1)
    samples.sort(key=lambda s: str(s.path))
    return RawDataset(root, "coco", tuple(samples), category_ids=category_ids)


def _check_coco_fields(path: Path, images: dict, annotations: list[dict]) -> None:
    """File names are text and boxes four finite numbers with no negative size: a hand-made or
    converted file's slip is one line naming the entry here, not a numpy traceback."""
    for image_id, name in images.items():
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{path}: image {image_id!r} has file_name {name!r}; give the "
                               "image's file name")
    for i, a in enumerate(annotations):
        box = a.get("bbox")
        numbers = isinstance(box, list) and len(box) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in box)
        if not numbers or box[2] < 0 or box[3] < 0:
            raise DatasetError(f"{path}: annotation {a.get('id', i)!r} (image_id "
                               f"{a['image_id']!r}) has bbox {box!r}; COCO boxes are [x, y, "
                               "width, height] in pixels, four numbers")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def _read_classes(root: Path, images: list[Path]) -> RawDataset:
    samples = []
    for image in images:
        parts = image.relative_to(root).parts
        if len(parts) < 2:
            raise DatasetError(f"--data {root} mixes class folders with loose images (e.g. "
                               f"{image.name}); put every image in its class folder")
        samples.append(RawSample(image, key=parts[0]))
    return RawDataset(root, "classes", tuple(samples))
