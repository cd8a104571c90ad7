"""`edge-opt bench`: accuracy against labels and against FP32, mAP with known answers, the
Pareto front, the self-contained HTML report and the user mistakes, on real runtimes and data."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimize.bench.accuracy import (
    Boxes,
    detection_map,
    ranked,
    top1_agreement,
    topk_accuracy,
)
from optimize.bench.dataset import resolve, scan
from optimize.bench.errors import DatasetError
from optimize.bench.pareto import pareto_front
from optimize.cli import build_parser
from tests.conftest import ROOT, error_lines, run_cli

# eval photos whose ImageNet class is clear; the FP32 EfficientNet-Lite0 gets 7 of the 10 right
# at top-1 (baboon_tr: guenon, fruits: lemon, chelsea: tiger cat) and all 10 within its top 5.
LABELLED = {"baboon": ["baboon.jpg", "views/baboon_flip.jpg", "views/baboon_tr.jpg"],
            "fox squirrel": ["squirrel_cls.jpg", "views/squirrel_cls_flip.jpg"],
            "orange": ["orange.jpg", "fruits.jpg", "views/orange_br.jpg"],
            "espresso": ["skimage_coffee.jpg"], "tabby": ["skimage_chelsea.jpg"]}
# the tiny detector's two confident boxes, as YOLO lines for a 128x128 image (letterbox 2:1)
YOLO_LINES = "0 0.25 0.25 0.25 0.25\n1 0.6875 0.625 0.3125 0.375\n"


def labelled_folder(data_dir: Path, root: Path) -> Path:
    for name, files in LABELLED.items():
        (root / name).mkdir(parents=True)
        for f in files:
            shutil.copy(data_dir / "eval" / f, root / name / Path(f).name)
    return root


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def rows_by_name(out: Path) -> dict[str, dict]:
    return {r["name"]: r for r in report(out)["rows"]}


# --- metrics with known answers ------------------------------------------------------------

GT = Boxes(np.array([[10, 10, 50, 50], [60, 60, 100, 120]], float), np.array([0, 1]))


def dets(xyxy, classes, scores=(0.9, 0.8)) -> Boxes:
    return Boxes(np.asarray(xyxy, float).reshape(-1, 4), np.asarray(classes),
                 np.asarray(scores[:len(classes)], float))


@pytest.mark.parametrize(("pred", "map50", "map50_95"), [
    (dets(GT.xyxy, [0, 1]), 1.0, 1.0),                                  # identical boxes
    (dets(GT.xyxy + 3, [0, 1]), 1.0, "lower"),                          # shifted a little
    (dets(GT.xyxy + 30, [0, 1]), 0.0, 0.0),                             # shifted off
    (dets(GT.xyxy, [1, 0]), 0.0, 0.0),                                  # classes swapped
    (dets(GT.xyxy[:1], [0]), 0.5, 0.5),                                 # one class missed
    (dets(np.vstack([GT.xyxy, [[200, 200, 240, 240]]]), [0, 1, 0], (0.9, 0.8, 0.1)), 1.0, 1.0),
    (dets(np.zeros((0, 4)), []), 0.0, 0.0),                             # nothing detected
], ids=["identical", "shifted", "off", "swapped", "missed", "low-score-extra", "none"])
def test_detection_map_known_answers(pred, map50, map50_95):
    got50, got = detection_map([pred], [GT])
    assert got50 == pytest.approx(map50)
    if map50_95 == "lower":
        assert 0.0 < got < 1.0
    else:
        assert got == pytest.approx(map50_95)


def test_detection_map_needs_ground_truth():
    empty = Boxes(np.zeros((0, 4)), np.zeros(0, int))
    assert detection_map([dets(GT.xyxy, [0, 1])], [empty]) == (None, None)


def test_topk_and_agreement():
    logits = np.array([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.2, 0.3, 0.5]])
    top = ranked(logits)
    assert top.tolist() == [[1, 2, 0], [0, 2, 1], [2, 1, 0]]
    assert topk_accuracy(top, np.array([1, 2, 0]), 1) == pytest.approx(1 / 3)
    assert topk_accuracy(top, np.array([1, 2, 0]), 2) == pytest.approx(2 / 3)
    assert topk_accuracy(top, np.array([1, 2, 0]), 5) is None  # only 3 classes
    assert top1_agreement(top, ranked(-logits)) == pytest.approx(0)
    assert top1_agreement(top, ranked(logits * 2)) == 1.0


def test_pareto_front_on_a_hand_made_table():
    table = [  # name, p50 ms, accuracy, on the front?
        ("fast", 10, 0.90, True),
        ("balanced", 20, 0.95, True),
        ("same as balanced", 20, 0.95, True),  # a tie: neither is better
        ("slower, worse", 15, 0.85, False),    # "fast" beats it on both
        ("slower, same", 30, 0.95, False),     # "balanced" is as good and faster
        ("slow, best", 40, 0.99, True),
        ("no accuracy", 5, None, False),
    ]
    points = [(ms, acc) if acc is not None else None for _, ms, acc, _ in table]
    assert pareto_front(points) == [on for *_, on in table]


# --- data layouts ---------------------------------------------------------------------------

def noise_images(folder: Path, n: int, size: int = 128) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"img{i}.png" for i in range(n)]
    for p in paths:
        cv2.imwrite(str(p), rng.integers(0, 255, (size, size, 3), np.uint8))
    return paths


def yolo_folder(root: Path, n: int = 6) -> Path:
    for p in noise_images(root / "images", n):
        (root / "labels").mkdir(exist_ok=True)
        (root / "labels" / f"{p.stem}.txt").write_text(YOLO_LINES)
    return root


def test_layouts_are_told_apart(tmp_path, data_dir):
    classes = scan(labelled_folder(data_dir, tmp_path / "val"))
    assert classes.kind == "classes"
    ds = resolve(classes, ("tabby", "baboon", "Fox_Squirrel", "orange", "espresso"), "classify")
    assert ds.class_map["fox squirrel"] == 2  # case, `_` and spaces do not matter
    assert scan(data_dir / "eval").kind == "images"
    yolo = scan(yolo_folder(tmp_path / "yolo"))
    assert yolo.kind == "yolo"
    ds = resolve(yolo, (), "detect")
    assert ds.samples[0].pixel_boxes(128, 128, ds.normalized).tolist() == [[16, 16, 48, 48],
                                                                         [68, 56, 108, 104]]
    # the same boxes as COCO json (x, y, w, h in pixels), next to the images
    coco = {"images": [{"id": 1, "file_name": "img0.png"}],
            "annotations": [{"id": 1, "image_id": 1, "bbox": [16, 16, 32, 32], "category_id": 1},
                            {"id": 2, "image_id": 1, "bbox": [68, 56, 40, 48], "category_id": 2}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    (tmp_path / "yolo" / "images" / "val.json").write_text(json.dumps(coco))
    raw = scan(tmp_path / "yolo" / "images")
    assert raw.kind == "coco"
    ds = resolve(raw, ("dog", "cat"), "detect")
    assert ds.samples[0].boxes.tolist() == [[16, 16, 48, 48], [68, 56, 108, 104]]
    assert ds.samples[0].box_classes.tolist() == [1, 0]  # matched by name, not by id


def test_yolo_polygons_and_bad_lines(tmp_path):
    noise_images(tmp_path / "d", 1)
    (tmp_path / "d" / "img0.txt").write_text("2 0.1 0.2 0.5 0.2 0.3 0.6\n")
    s = resolve(scan(tmp_path / "d"), (), "detect").samples[0]
    assert s.boxes.tolist() == [[0.1, 0.2, 0.5, 0.6]] and s.box_classes.tolist() == [2]
    (tmp_path / "d" / "img0.txt").write_text("cat 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=r"img0.txt:1: expected 'class cx cy w h'"):
        scan(tmp_path / "d")


COCO_OK = {"images": [{"id": 1, "file_name": "img0.png"}],
           "annotations": [{"id": 1, "image_id": 1, "bbox": [16, 16, 32, 32], "category_id": 1}],
           "categories": [{"id": 1, "name": "cat"}]}


def _broken(ann: dict | None = None, image: dict | None = None) -> dict:
    return {**COCO_OK, "annotations": [{**COCO_OK["annotations"][0], **(ann or {})}],
            "images": [{**COCO_OK["images"][0], **(image or {})}]}


@pytest.mark.parametrize(("text", "words"), [
    (json.dumps(COCO_OK)[:-30], ["cannot be read as JSON", "fix or remove"]),
    (json.dumps(_broken({"bbox": [1, 2, 3]})), ["annotation 1", "[x, y, width, height]"]),
    (json.dumps(_broken({"bbox": ["a", 2, 3, 4]})), ["annotation 1", "four numbers"]),
    (json.dumps(_broken({"bbox": None})), ["has bbox None"]),
    (json.dumps(_broken({"bbox": [1, 2, -3, 4]})), ["has bbox [1, 2, -3, 4]"]),
    (json.dumps(_broken(image={"file_name": None})), ["file_name None"]),
    (json.dumps(_broken({"image_id": 9})), ["image_id 9", "not among its images"]),
], ids=["truncated", "three numbers", "text", "no bbox", "negative width", "no file name",
        "unknown image"])
def test_malformed_coco_annotations_are_one_line_naming_the_entry(tmp_path, text, words):
    """A COCO file cut short or with a bad entry is named, not skipped (the folder was then
    read as class folders: 'holds class-folder labels') nor a numpy traceback."""
    noise_images(tmp_path / "d", 1)
    (tmp_path / "d" / "val.json").write_text(text)
    with pytest.raises(DatasetError) as error:
        scan(tmp_path / "d")
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize("layout", ["coco", "yolo"])
def test_detection_labels_without_a_box_are_refused(tmp_path, layout):
    """No ground-truth box at all: no mAP to measure (the report said 'accuracy is against the
    labels' and showed no labelled figure)."""
    noise_images(tmp_path / "d", 2)
    if layout == "coco":
        (tmp_path / "d" / "val.json").write_text(json.dumps({**COCO_OK, "annotations": []}))
    else:
        for i in range(2):
            (tmp_path / "d" / f"img{i}.txt").write_text("")
    with pytest.raises(DatasetError, match="hold no box in any of its"):
        resolve(scan(tmp_path / "d"), ("cat",), "detect")


def test_build_flags_are_exports(capsys):
    args = build_parser().parse_args(
        ["bench", "m.onnx", "-t", "x86-int8", "--resize", "letterbox", "--mean", "0", "--std",
         "255", "--task", "detect", "--decoder", "yolov8", "--calib", "c", "--calib-size", "20"])
    assert (args.resize, args.task, args.decoder, args.calib_size) == ("letterbox", "detect",
                                                                       "yolov8", 20)
    helps = {}
    for command in ("export", "bench"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        helps[command] = capsys.readouterr().out
    for flag in ("--calib-method", "--crop-fraction", "--decoder-params", "--scheme", "--card"):
        assert flag in helps["export"] and flag in helps["bench"]


# --- EfficientNet-Lite0, real weights, real runtime ------------------------------------------

def test_classification_against_labels(effnet_bundles, data_dir, tmp_path):
    val = labelled_folder(data_dir, tmp_path / "val")
    out = tmp_path / "bench"
    names = ["x86-fp32", "x86-int8", "jetson-int8", "x86-int4"]
    result = run_cli("edge-opt", "bench", *[effnet_bundles / n for n in names], "--data", val,
                     "--runs", "10", "--out", out)
    assert result.returncode == 0, result.stderr
    data = report(out)
    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows) == names
    fp32 = rows["x86-fp32"]
    assert fp32["top1"] == pytest.approx(0.7) and fp32["top5"] == 1.0
    assert fp32["reference"] and fp32["agree"] == 1.0
    assert fp32["fidelity"]["metric"] == "top-1 agreement with FP32"
    assert data["reference"] == "x86-fp32" and "among the inputs" in data["reference_note"]
    assert data["data"]["classes"] == {"baboon": 372, "espresso": 967, "fox squirrel": 335,
                                       "orange": 950, "tabby": 281}
    for r in rows.values():
        assert r["images"] == 10 and r["accuracy_metric"] == "top1"
        assert 0 <= r["top1"] <= r["top5"] <= 1 and 0 <= r["agree"] <= 1
        assert r["fidelity"]["images"] == 10
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p95"] <= r["latency_ms_p99"]
        assert r["throughput_per_s"] > 0 and r["pre_ms_p50"] > 0 and r["post_ms_p50"] > 0
        assert r["prepost_ms_p50"] > 0 and r["runs"] == 10 and r["threads"] >= 1
        assert 0 < r["rss_baseline_bytes"] <= r["rss_after_load_bytes"] <= r["peak_rss_bytes"]
    # int8/int4 files are smaller than fp32 (the jetson int8 keeps float weights for TensorRT)
    assert rows["x86-int8"]["size_bytes"] < 0.35 * fp32["size_bytes"]
    points = [(r["latency_ms_p50"], r["accuracy"]) for r in data["rows"]]
    assert [r["pareto"] for r in data["rows"]] == pareto_front(points)
    assert data["pareto_front"] == [r["name"] for r in data["rows"] if r["pareto"]]
    md = (out / "report.md").read_text()
    assert "| top-1 | top-5 | top-1 agree | max |diff| | Pareto |" in md
    assert "x86-fp32 (ref)" in md
    assert "top-1" in result.stdout and "report.html" in result.stdout
    check_html(out / "report.html")


def check_html(path: Path) -> None:
    """Self-contained: nothing to fetch, no scripts; the four charts are real images."""
    page = path.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "@import" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    alts = re.findall(r'<img alt="([^"]*)"', page)
    assert alts == ["accuracy vs latency chart", "latency chart", "size chart", "memory chart"]
    for src in sources:
        png = base64.b64decode(src.split(",", 1)[1])
        image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape[0] > 200 and image.shape[1] > 600 and image.std() > 10
    assert "Pareto front" in page and "<table>" in page


def test_agreement_without_labels(effnet_bundles, data_dir, tmp_path):
    out = tmp_path / "bench"
    result = run_cli("edge-opt", "bench", effnet_bundles / "x86-int8",
                     effnet_bundles / "x86-fp32", "--data", data_dir / "eval", "--max-images",
                     "8", "--runs", "5", "--out", out)
    assert result.returncode == 0, result.stderr
    data = report(out)
    rows = {r["name"]: r for r in data["rows"]}
    assert data["data"]["kind"] == "images" and data["reference"] == "x86-fp32"
    assert rows["x86-fp32"]["accuracy"] == 1.0 and rows["x86-fp32"]["reference"]
    assert rows["x86-int8"]["accuracy_metric"] == "agree"
    assert 0.5 <= rows["x86-int8"]["agree"] <= 1 and rows["x86-int8"].get("top1") is None
    assert rows["x86-int8"]["fidelity"]["details"]["top1_agreement"] == rows["x86-int8"]["agree"]
    assert rows["x86-int8"]["images"] == 8
    assert "top-1 agreement with FP32" in (out / "report.md").read_text()


# --- a detector-shaped ONNX model: YOLOv8 layout, boxes known in advance ---------------------

def tiny_detector(path: Path, hw: int = 64) -> Path:
    """(1, 3, 64, 64) -> (1, 4+2, 3) YOLOv8 layout: three fixed boxes (cx, cy, w, h in input
    pixels) with class scores from a Gemm on the image mean; box 0 is class 0, box 1 class 1
    (sigmoid(3) = 0.95), box 2 stays under the threshold."""
    anchors = np.array([[16, 44, 32], [16, 40, 50], [16, 20, 10], [16, 24, 8]], np.float32)[None]
    inits = [numpy_helper.from_array(anchors, "anchors"),
             numpy_helper.from_array(np.full((3, 6), 0.01, np.float32), "w"),
             numpy_helper.from_array(np.array([3, -4, -4, -4, 3, -4], np.float32), "b"),
             numpy_helper.from_array(np.array([1, 2, 3], np.int64), "shape")]
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["r"]),
             helper.make_node("Sigmoid", ["r"], ["s"]),
             helper.make_node("Concat", ["anchors", "s"], ["output0"], axis=1)]
    graph = helper.make_graph(
        nodes, "tiny_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


DETECT_FLAGS = ["--format", "onnx", "--task", "detect", "--decoder", "yolov8",
                "--decoder-params", '{"num_classes": 2}', "--resize", "letterbox"]


@pytest.fixture(scope="module")
def detector_bench(tmp_path_factory) -> Path:
    """`edge-opt bench MODEL --target x86-int8` on unlabelled images: builds the bundles and,
    with no labels, the FP32 reference as well."""
    root = tmp_path_factory.mktemp("detector")
    model = tiny_detector(root / "det.onnx")
    noise_images(root / "frames", 6)
    out = root / "bench"
    result = run_cli("edge-opt", "bench", model, "--target", "x86-int8", *DETECT_FLAGS,
                     "--calib", root / "frames", "--data", root / "frames", "--runs", "5",
                     "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def test_detector_agreement_builds_its_fp32(detector_bench):
    data = report(detector_bench)
    rows = {r["name"]: r for r in data["rows"]}
    assert sorted(rows) == ["x86-fp32", "x86-int8"]
    assert data["reference"] == "x86-fp32" and "built from the model" in data["reference_note"]
    assert (detector_bench / "bundles" / "x86-fp32" / "manifest.json").is_file()
    assert rows["x86-fp32"]["fidelity"]["details"]["map50"] == pytest.approx(1.0)
    assert rows["x86-int8"]["accuracy_metric"] == "agree"
    assert rows["x86-int8"]["fidelity"]["metric"] == "mAP@0.5:0.95 vs FP32"
    assert 0.5 <= rows["x86-int8"]["agree"] <= 1.0
    assert "F1 vs fp32" in (detector_bench / "report.md").read_text()
    check_html(detector_bench / "report.html")


def test_detector_map_against_yolo_labels(detector_bench, tmp_path):
    data = yolo_folder(tmp_path / "val")
    out = tmp_path / "bench"
    bundles = detector_bench / "bundles"
    result = run_cli("edge-opt", "bench", bundles / "x86-fp32", bundles / "x86-int8", "--data",
                     data, "--runs", "5", "--out", out)
    assert result.returncode == 0, result.stderr
    rows = rows_by_name(out)
    assert rows["x86-fp32"]["map50"] == pytest.approx(1.0)
    assert rows["x86-fp32"]["map50_95"] == pytest.approx(1.0)
    assert 0.5 <= rows["x86-int8"]["map50_95"] <= 1.0


def _coco_folder(root: Path, first_id: int) -> Path:
    """YOLO_LINES' boxes as COCO json, category ids counting from `first_id`."""
    noise_images(root, 6)
    anns = [{"id": 2 * i + c + 1, "image_id": i + 1, "bbox": box, "category_id": first_id + c}
            for i in range(6) for c, box in enumerate(([16, 16, 32, 32], [68, 56, 40, 48]))]
    (root / "val.json").write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": f"img{i}.png"} for i in range(6)],
        "annotations": anns,
        "categories": [{"id": first_id, "name": "cat"}, {"id": first_id + 1, "name": "dog"}]}))
    return root


def test_coco_ids_of_a_bundle_without_labels_must_count_from_zero(detector_bench, tmp_path):
    """The bundle has no labels.txt: COCO's usual ids (from 1) were taken as class ids, the
    model's class 0 was scored against category 1, and mAP came out near 0 without a word."""
    fp32 = detector_bench / "bundles" / "x86-fp32"
    result = run_cli("edge-opt", "bench", fp32, "--data", _coco_folder(tmp_path / "one", 1),
                     "--runs", "2", "--out", tmp_path / "bench1")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in ("COCO category ids start at 1 ('cat')", "no labels.txt", "--labels FILE",
                 "number the categories from 0"):
        assert word in result.stderr, result.stderr
    assert not (tmp_path / "bench1").exists()
    result = run_cli("edge-opt", "bench", fp32, "--data", _coco_folder(tmp_path / "zero", 0),
                     "--runs", "2", "--out", tmp_path / "bench0")
    assert result.returncode == 0, result.stderr
    assert rows_by_name(tmp_path / "bench0")["x86-fp32"]["map50"] == pytest.approx(1.0)


def test_unnamed_coco_categories_are_matched_by_id_only_from_zero(tmp_path):
    """With labels.txt, categories named there match by name; one without a name is a class
    id only when the file's ids count from 0."""
    raw = scan(_coco_folder(tmp_path / "d", 1))
    assert resolve(raw, ("dog", "cat"), "detect").samples[0].box_classes.tolist() == [1, 0]
    data = json.loads((tmp_path / "d" / "val.json").read_text())
    data["categories"] = [{"id": 1}, {"id": 2, "name": "dog"}]
    (tmp_path / "d" / "val.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"start at 1 \('1'\).* 1 of them have no name"):
        resolve(scan(tmp_path / "d"), ("dog", "cat"), "detect")


def test_measuring_runs_edge_opts_own_code_whatever_the_working_folder(detector_bench,
                                                                       tmp_path):
    """An installed `edge-opt` (a console script) never imports from the working folder, but
    its measuring process (`python -m`) did: run from a folder holding a package named like
    one of edge-opt's (a checkout of another version, a user's own `optimize/`), every bundle
    was measured by that folder's code, or died. Now the measuring process runs edge-opt's."""
    here = tmp_path / "project"
    (here / "optimize").mkdir(parents=True)
    (here / "optimize" / "__init__.py").write_text('raise ImportError("decoy optimize")\n')
    # a console script: sys.path starts with the code's own folder, not the working folder
    launcher = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                "from optimize.cli import main; sys.exit(main())")
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-c", launcher, "bench",
                           str(detector_bench / "bundles"), "--data",
                           str(detector_bench.parent / "frames"), "--runs", "2", "--quiet",
                           "--out", str(out)], cwd=here, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "decoy" not in proc.stderr
    assert sorted(rows_by_name(out)) == ["x86-fp32", "x86-int8"]

# --- user mistakes: one or two lines, no traceback -------------------------------------------

@pytest.fixture
def places(tmp_path, data_dir, effnet_bundles):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notbundle").mkdir()
    (tmp_path / "notbundle" / "model.onnx").write_bytes(b"x")
    (tmp_path / "wrong" / "not a class").mkdir(parents=True)
    shutil.copy(data_dir / "eval" / "baboon.jpg", tmp_path / "wrong" / "not a class")
    yolo_folder(tmp_path / "yolo", 1)
    (tmp_path / "corrupt").mkdir()
    for i in range(2):
        (tmp_path / "corrupt" / f"img{i}.jpg").write_bytes(b"not a jpeg")
    return {"dir": tmp_path, "fp32": effnet_bundles / "x86-fp32",
            "int8": effnet_bundles / "x86-int8", "eval": data_dir / "eval"}


ERRORS = [
    ("no data", ["{fp32}"], ["no --data"]),
    ("empty data folder", ["{fp32}", "--data", "{dir}/empty"], ["has no images"]),
    ("missing data folder", ["{fp32}", "--data", "{dir}/nowhere"], ["does not exist"]),
    ("labels that match no class", ["{fp32}", "--data", "{dir}/wrong"],
     ["'not a class'", "match no class", "labels.txt"]),
    ("boxes for a classifier", ["{fp32}", "--data", "{dir}/yolo"],
     ["YOLO labels", "a folder per class"]),
    ("not a bundle", ["{dir}/notbundle", "--data", "{eval}"], ["not a bundle", "manifest.json"]),
    ("missing bundle", ["{dir}/nope", "--data", "{eval}"], ["does not exist"]),
    ("model without targets", ["{dir}/notbundle/model.onnx", "--data", "{eval}"],
     ["--target"]),
    ("targets with bundles", ["{fp32}", "-t", "x86-int8", "--data", "{eval}"],
     ["not a model", "drop --target"]),
    ("build flags with bundles", ["{fp32}", "--calib", "{eval}", "--data", "{eval}"],
     ["--calib", "only apply"]),
    ("no labels, no fp32", ["{int8}", "--data", "{eval}"], ["no labels", "fp32"]),
    ("unreadable images", ["{fp32}", "--data", "{dir}/corrupt"], ["none of the 2 images"]),
]


@pytest.mark.parametrize(("args", "words"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_user_mistakes_get_a_clear_error(places, args, words):
    args = [a.format(**places) for a in args]
    result = run_cli("edge-opt", "bench", *args, "--out", places["dir"] / "out")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert 1 <= len(error_lines(result.stderr)) <= 2, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_raw_tensors_are_judged_by_sqnr(tmp_path, data_dir):
    """A model nobody can interpret (raw task) gets the raw task's yardstick, SQNR and cosine
    against FP32, as export's guard judges it, not an empty accuracy column."""
    from tests.optimize.test_tasks import yolo_like_head

    model = yolo_like_head(tmp_path / "head.onnx")
    out = tmp_path / "bench"
    result = run_cli("edge-opt", "bench", model, "--target", "jetson-int8", "--calib",
                     data_dir / "calib", "--data", data_dir / "eval", "--max-images", "6",
                     "--runs", "5", "--out", out)
    assert result.returncode == 0, result.stderr
    rows = rows_by_name(out)
    fp32 = next(r for r in rows.values() if r["reference"])  # the profile's own fp32
    int8 = rows["jetson-int8"]
    assert int8["accuracy_metric"] == "agree"
    assert int8["fidelity"]["metric"] == "SQNR (worst output)" and int8["fidelity"]["unit"] == "dB"
    assert 20 < int8["accuracy"] < fp32["accuracy"]
    md = (out / "report.md").read_text()
    assert "| SQNR dB | cosine |" in md and "top-1" not in md


def test_reports_replace_only_bench_own(effnet_bundles, data_dir, tmp_path):
    """OUT's report.* are replaced when bench wrote them; a user's file of that name, or a
    bundle folder given as --out, is refused before any work and left as it was."""
    out = tmp_path / "bench"
    args = [effnet_bundles / "x86-fp32", "--data", data_dir / "eval", "--max-images", "2",
            "--runs", "2"]
    for _ in range(2):  # the second run replaces the first run's reports
        result = run_cli("edge-opt", "bench", *args, "--out", out)
        assert result.returncode == 0, result.stderr
    (out / "report.md").write_text("my notes\n")
    refused = [run_cli("edge-opt", "bench", *args, "--out", out),
               run_cli("edge-opt", "bench", *args, "--out", effnet_bundles / "x86-int8")]
    for result, words in zip(refused, (["report.md", "not written by edge-opt bench",
                                        "--overwrite"], ["bundle folder", "another --out"])):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(error_lines(result.stderr)) <= 2
        assert all(w in result.stderr for w in words), result.stderr
    assert (out / "report.md").read_text() == "my notes\n"
    assert not (effnet_bundles / "x86-int8" / "report.html").exists()


def test_unreadable_images_of_data_are_named(tmp_path):
    """A corrupt file among --data's images was left out with only a count ('5 image(s) read
    by every bundle' of 6); the report now names it, as export's names what it skipped."""
    from tests.optimize.tiny_models import tiny_classifier

    model = tiny_classifier(tmp_path / "tiny.onnx")
    built = run_cli("edge-opt", "export", model, "-t", "x86-fp32", "--format", "onnx",
                    "--runs", "1", "--quiet", "--out", tmp_path / "out")
    assert built.returncode == 0, built.stderr
    noise_images(tmp_path / "data", 3, size=32)
    (tmp_path / "data" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    result = run_cli("edge-opt", "bench", tmp_path / "out" / "x86-fp32", "--data",
                     tmp_path / "data", "--runs", "2", "--quiet", "--out", tmp_path / "bench")
    assert result.returncode == 0, result.stderr
    assert "Skipped 1 file(s)" in result.stdout and "(broken.jpg)" in result.stdout
    assert "broken.jpg" in (tmp_path / "bench" / "report.md").read_text()


def test_bundles_written_before_the_source_hash_covered_side_files_still_compare():
    """A bundle written before sha256_covers hashed only the .onnx file, also when the weights
    were in a side file: bench must not call it another model than a newer bundle's (whose hash
    covers both), nor mix up two models whose hashes cover the same files."""
    from types import SimpleNamespace

    from optimize.bench.runner import _same_source

    def bundle(source: dict):
        return SimpleNamespace(manifest=SimpleNamespace(source=source))

    old = bundle({"sha256": "a" * 64})
    new = bundle({"sha256": "b" * 64, "sha256_covers": ["net.onnx", "net.onnx.data"]})
    assert _same_source(old, new) and _same_source(new, old)
    plain = bundle({"sha256": "c" * 64, "sha256_covers": ["net.onnx"]})
    assert not _same_source(old, plain)  # one file both times: a real difference
    assert not _same_source(new, bundle({**new.manifest.source, "sha256": "d" * 64}))
    assert _same_source(new, bundle(dict(new.manifest.source)))
