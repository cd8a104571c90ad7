"""Tasks measured by their own yardstick (ISSUE 15): the fidelity figures, the held-out split,
the raw default, the head tail kept float, Ultralytics metadata and softmax outputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edge_sdk
from edge_sdk.manifest import TaskSpec
from optimize.calibration import load_images
from optimize.fidelity import split_held_out
from optimize.keep_float import attention_nodes, float_tail_nodes
from optimize.tasks import Scoring, get_task
from optimize.tasks.base import view_group
from optimize.tasks.raw import sqnr_db
from tests.conftest import error_lines, run_cli
from tests.optimize.tiny_models import tiny_classifier

# --- fidelity figures -------------------------------------------------------------------------

CLASSES = 3


def yolov8_output(boxes: list[tuple[float, float, float, float, int, float]], n: int = 64
                  ) -> np.ndarray:
    """(1, 4+C, N) as Ultralytics exports it: cx, cy, w, h, then class scores; empty anchors."""
    out = np.zeros((1, 4 + CLASSES, n), np.float32)
    out[0, :4] = 10.0
    for i, (cx, cy, w, h, cls, score) in enumerate(boxes):
        out[0, :4, i] = (cx, cy, w, h)
        out[0, 4 + cls, i] = score
    return out


SCENES = [[(50, 50, 40, 60, 0, 0.9), (150, 80, 30, 30, 1, 0.8)],
          [(100, 120, 60, 40, 2, 0.7)],
          [(30, 40, 20, 20, 0, 0.95), (200, 200, 50, 90, 1, 0.6), (120, 60, 40, 40, 2, 0.5)]]
DETECT = Scoring(TaskSpec("detect", "yolov8", {"conf_threshold": 0.25}), ("a", "b", "c"),
                 ("x.jpg", "x_flip.jpg", "y.jpg"), ("output0",))


def _scenes(transform) -> list[list[np.ndarray]]:
    return [[yolov8_output([transform(b) for b in scene])] for scene in SCENES]


def test_detection_fidelity_is_perfect_for_the_same_detections():
    ref = _scenes(lambda b: b)
    fid = get_task("detect").fidelity(ref, ref, DETECT)
    assert fid.value == pytest.approx(1.0) and fid.details["f1"] == 1.0 and fid.loss == 0.0
    assert fid.independent == 2  # x.jpg and its mirror are one photo
    assert set(fid.columns) == {"mAP50-95 vs fp32", "mAP50 vs fp32", "F1 vs fp32"}


def test_detection_fidelity_sees_boxes_that_moved():
    ref = _scenes(lambda b: b)
    got = _scenes(lambda b: (b[0] + 0.12 * b[2], *b[1:]))  # every box shifted by 12 % of width
    fid = get_task("detect").fidelity(ref, got, DETECT)
    assert fid.details["map50"] == pytest.approx(1.0)  # still the same objects at IoU 0.5...
    assert 0.3 < fid.value < 0.9  # ...but not at the strict thresholds
    assert fid.details["f1"] == 1.0
    assert not fid.within(10.0)


def test_detection_fidelity_refuses_squashed_scores():
    """The classic int8 collapse: scores rounded down (here under the deployed threshold)."""
    ref = _scenes(lambda b: b)
    got = _scenes(lambda b: (*b[:5], b[5] * 0.2))
    fid = get_task("detect").fidelity(ref, got, DETECT)
    assert fid.details["f1"] == 0.0 and fid.loss == 200.0 and not fid.within(10.0)


def test_classify_fidelity_counts_top1_flips():
    ref = [[np.array([[0.1, 0.9]], np.float32)], [np.array([[0.8, 0.2]], np.float32)]]
    got = [[np.array([[0.2, 0.8]], np.float32)], [np.array([[0.3, 0.7]], np.float32)]]
    scoring = Scoring(TaskSpec("classify", "topk"), (), ("a.jpg", "b.jpg"), ("output",))
    fid = get_task("classify").fidelity(ref, got, scoring)
    assert fid.value == 0.5 and fid.loss == 50.0 and fid.within(50.0) and not fid.within(49.0)


def test_sqnr_of_a_ten_percent_error_is_twenty_db():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=100_000)
    noise = rng.normal(size=ref.size)
    noise *= 0.1 * np.linalg.norm(ref) / np.linalg.norm(noise)
    assert sqnr_db(ref, ref + noise) == pytest.approx(20.0, abs=1e-6)
    assert sqnr_db(ref, ref) == 120.0


def test_raw_fidelity_reports_each_output_and_floors_the_worst():
    rng = np.random.default_rng(1)
    ref = [[rng.normal(size=(1, 8)).astype(np.float32), rng.normal(size=(1, 2, 4, 4))
            .astype(np.float32)] for _ in range(4)]
    got = [[a, b * 0] for a, b in ref]  # the second output lost entirely
    scoring = Scoring(TaskSpec("raw", "raw"), (), tuple(f"{i}.jpg" for i in range(4)),
                      ("feat", "map"))
    fid = get_task("raw").fidelity(ref, got, scoring)
    per = fid.details["per_output"]
    assert per["feat"]["sqnr_db"] == 120.0 and per["map"]["sqnr_db"] == pytest.approx(0.0)
    assert fid.value == pytest.approx(0.0) and not fid.within(20.0) and fid.within(-1.0)


# --- the held-out split -----------------------------------------------------------------------

def test_held_out_split_keeps_a_photos_views_together_and_parts_apart(data_dir):
    spec = edge_sdk.manifest.InputSpec("input", (1, 3, 16, 16))
    images = load_images(data_dir / "eval", spec, "evaluation")
    held = split_held_out(images)
    search = {view_group(n) for n in held.search.names}
    report = {view_group(n) for n in held.report.names}
    assert search and report and not search & report
    assert len(held.search) + len(held.report) == len(images)
    assert {"baboon_tl.jpg", "baboon.jpg"} <= set(held.search.names) | set(held.report.names)
    assert ({"baboon_tl.jpg", "baboon.jpg"} <= set(held.search.names)
            or {"baboon_tl.jpg", "baboon.jpg"} <= set(held.report.names))


# --- the head tail ----------------------------------------------------------------------------

def yolo_like_head(path, hw: int = 32):
    """Conv body -> a box conv and a class conv -> box * stride, sigmoid(cls) -> Concat: the
    concat that puts pixel coordinates next to 0..1 scores, as Ultralytics heads do."""
    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    inits = [w("w0", 8, 3, 3, 3), w("wb", 4, 8, 1, 1), w("wc", 2, 8, 1, 1),
             numpy_helper.from_array(np.array([16.0], np.float32), "stride"),
             numpy_helper.from_array(np.array([1, 6, -1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["input", "w0"], ["f"], name="body", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["f"], ["r"], name="body_relu"),
             helper.make_node("Conv", ["r", "wb"], ["box"], name="box_conv"),
             helper.make_node("Conv", ["r", "wc"], ["cls"], name="cls_conv"),
             helper.make_node("Mul", ["box", "stride"], ["box_px"], name="to_pixels"),
             helper.make_node("Sigmoid", ["cls"], ["score"], name="score"),
             helper.make_node("Concat", ["box_px", "score"], ["cat"], name="mix", axis=1),
             helper.make_node("Reshape", ["cat", "shape"], ["output"], name="flat")]
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                      [1, 3, hw, hw])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 6, hw * hw])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_float_tail_is_everything_after_the_last_weighted_layers(tmp_path):
    assert float_tail_nodes(yolo_like_head(tmp_path / "head.onnx")) == [
        "to_pixels", "score", "mix", "flat"]


def test_float_tail_of_a_classifier_ending_in_gemm_is_empty(tmp_path):
    assert float_tail_nodes(tiny_classifier(tmp_path / "c.onnx")) == []


def test_attention_stays_float_but_linear_layers_do_not(tmp_path):
    """q x k, its softmax and attn x v are activation x activation; the projection has weights."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w_proj")
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["x"], name="tokens"),
             helper.make_node("MatMul", ["x", "w_proj"], ["q"], name="proj"),
             helper.make_node("Transpose", ["q"], ["kt"], name="kt", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["logits"], name="qk"),
             helper.make_node("Softmax", ["logits"], ["attn"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["attn", "q"], ["output"], name="av")]
    shape = numpy_helper.from_array(np.array([1, 12, 8], np.int64), "shape")
    graph = helper.make_graph(
        nodes, "attn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 12, 8])], [w, shape])
    path = tmp_path / "attn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert sorted(attention_nodes(path)) == ["av", "qk", "softmax"]


# --- through the command line -----------------------------------------------------------------

def _export(model, out, *args):
    return run_cli("edge-opt", "export", model, "--runs", "3", "--quiet", "--out", out, *args)


def test_a_model_nobody_can_interpret_exports_as_raw_to_int8_targets(tmp_path, data_dir):
    """Once refused ("cannot tell what the model's output means"): now raw tensors, judged by
    SQNR; the bundle runs and predict() returns the outputs by name."""
    model = yolo_like_head(tmp_path / "head.onnx")
    out = tmp_path / "out"
    result = _export(model, out, "-t", "x86-int8", "-t", "jetson-int8", "--format", "default",
                     "--calib", data_dir / "calib", "--eval", data_dir / "eval")
    assert result.returncode == 0, result.stderr
    for target in ("x86-int8", "jetson-int8"):
        manifest = json.loads((out / target / "manifest.json").read_text())
        assert manifest["task"]["type"] == "raw" and manifest["task"]["decoder"] == "raw"
        fid = manifest["metrics"]["fidelity"]
        assert fid["unit"] == "dB" and fid["details"]["per_output"]["output"]["sqnr_db"] > 20
        guard = manifest["metrics"]["accuracy_guard"]
        assert guard["float_tail"] == ["to_pixels", "score", "mix", "flat"]
        assert set(guard["float_tail"]) <= set(manifest["quantization"]["excluded_nodes"])
        result = edge_sdk.load(out / target).predict(data_dir / "eval" / "baboon.jpg")
        assert isinstance(result, edge_sdk.RawOutputs)
        assert result["output"].shape == (1, 6, 32 * 32)
    assert "SQNR dB" in (out / "report.md").read_text()
    assert "top-1" not in (out / "report.md").read_text()


def softmax_classifier(path, hw: int = 32, dynamic: bool = False, metadata: dict | None = None):
    """tiny_classifier with a Softmax at the end (probabilities out), optionally with a dynamic
    input and Ultralytics-style metadata."""
    tiny_classifier(path, hw)
    model = onnx.load(str(path))
    graph = model.graph
    graph.node[-1].output[0] = "logits"
    graph.node.append(helper.make_node("Softmax", ["logits"], ["output"], axis=1))
    if dynamic:
        for d, name in zip(graph.input[0].type.tensor_type.shape.dim[2:], ("h", "w")):
            d.Clear()
            d.dim_param = name
    for key, value in (metadata or {}).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(model, str(path))
    return path


def test_probabilities_are_not_softmaxed_again(tmp_path, data_dir):
    model = softmax_classifier(tmp_path / "soft.onnx")
    out = tmp_path / "out"
    assert _export(model, out, "-t", "x86-fp32", "--format", "onnx").returncode == 0
    bundle = edge_sdk.load(out / "x86-fp32")
    assert bundle.manifest.task.params.get("softmax") is False
    frame = data_dir / "eval" / "baboon.jpg"
    probabilities = bundle.infer(bundle.preprocess(edge_sdk.model._read_image(frame))[0])
    top = bundle.predict(frame)
    assert top.scores[0] == pytest.approx(float(probabilities["output"].max()), rel=1e-5)


def test_ultralytics_metadata_gives_shape_task_and_labels(tmp_path):
    names = "{0: 'cat', 1: 'dog', 2: 'bird', 3: 'fish'}"
    model = softmax_classifier(tmp_path / "u.onnx", dynamic=True, metadata={
        "imgsz": "[32, 32]", "task": "classify", "names": names, "stride": "1"})
    out = tmp_path / "out"
    result = _export(model, out, "-t", "x86-fp32", "--format", "onnx")  # no --input-shape
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "x86-fp32" / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [1, 3, 32, 32]
    assert manifest["task"]["type"] == "classify"
    assert (out / "x86-fp32" / "labels.txt").read_text().split() == ["cat", "dog", "bird", "fish"]


def test_dynamic_input_without_metadata_still_asks_for_the_shape(tmp_path):
    model = softmax_classifier(tmp_path / "d.onnx", dynamic=True)
    result = _export(model, tmp_path / "out", "-t", "x86-fp32", "--format", "onnx")
    assert result.returncode != 0 and "--input-shape" in result.stderr
    assert "Traceback" not in result.stderr



@pytest.mark.parametrize(("metadata", "flags", "words"), [
    (False, ["--task", "pose"], ["--task pose with decoder yolov8-pose cannot read this "
                                 "model's outputs", "the model suggests --task raw"]),
    (True, ["--task", "detect", "--decoder", "yolov5"], ["decoder yolov5 cannot read",
                                                         "--task detect --decoder yolov8"]),
    (True, ["--task", "segment"], ["--task segment", "metadata", "is a detect model",
                                   "--task raw"]),
], ids=["pose on a detector", "yolov5 on a yolov8 head", "segment on a detector"])
def test_a_task_or_decoder_that_does_not_fit_the_outputs_is_refused_before_any_work(
        tmp_path, data_dir, metadata, flags, words):
    """A YOLOv8-layout detector given --task pose or --decoder yolov5 failed only once its
    int8 bundle was built and run ('memory-1: yolov8-pose: expected ...'), without saying
    what to pass; with Ultralytics metadata (task detect) --task segment was exported, a
    semantic map read from the detector's rows and judged a perfect mIoU 1.000 against FP32's
    own misreading."""
    from tests.optimize.test_bench import tiny_detector

    model = onnx.load(str(tiny_detector(tmp_path / "det.onnx")))
    for key, value in (("task", "detect"), ("names", "{0: 'cat', 1: 'dog'}")) * metadata:
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(model, str(tmp_path / "det.onnx"))
    out = tmp_path / "out"
    result = _export(tmp_path / "det.onnx", out, "-t", "x86-int8", "--format", "onnx",
                     "--calib", data_dir / "calib", *flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(error_lines(result.stderr)) <= 2, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert not out.exists()


def test_yolo_nms_on_a_head_before_nms_is_refused_naming_yolov8(tmp_path):
    """YOLO11n's raw head (1, 5, 8400) given --decoder yolo-nms (NMS rows x1 y1 x2 y2 score
    class) was exported: its channels were read as 8400-column rows, and the bundle reported
    boxes of nonsense."""
    from tests.optimize.real_models import model_path

    out = tmp_path / "out"
    result = _export(model_path("yolo11n_person"), out, "-t", "x86-fp32", "--format", "onnx",
                     "--task", "detect", "--decoder", "yolo-nms")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in ("decoder yolo-nms cannot read", "(1, 5, 8400) is a YOLO head before NMS",
                 "use decoder yolov8", "--task detect --decoder yolov8"):
        assert word in result.stderr, result.stderr
    assert not out.exists()


def test_segment_on_a_detector_without_metadata_is_refused(tmp_path):
    """YOLO11n without its Ultralytics metadata, given --task segment, was exported: the
    semantic-map decoder read its (1, 5, 8400) rows as a 5 x 8400 probability map."""
    from tests.optimize.real_models import model_path

    model = onnx.load(str(model_path("yolo11n_person")))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "det.onnx"))
    out = tmp_path / "out"
    result = _export(tmp_path / "det.onnx", out, "-t", "x86-fp32", "--format", "onnx",
                     "--input-shape", "1x3x640x640", "--task", "segment")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in ("decoder semantic-map cannot read", "[1, 5, 8400] is not a map of the "
                 "640x640 input", "use --task detect"):
        assert word in result.stderr, result.stderr
    assert not out.exists()


def nms_rows_model(path, hw: int = 64, rows: int = 300, weights: np.ndarray | None = None,
                   bias: np.ndarray | None = None):
    """(1, 3, hw, hw) -> (1, rows, 6), the shape of Ultralytics' nms=True export (x1, y1, x2,
    y2, score, class per row): a Gemm on the image's channel means, `weights` (3, rows * 6)
    and `bias` (rows * 6), random by default where only the shape matters."""
    if weights is None:
        weights = np.random.default_rng(0).normal(0, 1, (3, rows * 6))
    inits = [numpy_helper.from_array(np.asarray(weights, np.float32), "w"),
             numpy_helper.from_array(np.zeros(rows * 6, np.float32) if bias is None else
                                     np.asarray(bias, np.float32).reshape(-1), "b"),
             numpy_helper.from_array(np.array([1, rows, 6], np.int64), "shape")]
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["output0"])]
    graph = helper.make_graph(
        nodes, "nms_rows",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, rows, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_yolov8_on_nms_rows_is_refused_naming_yolo_nms(tmp_path):
    """A YOLO exported with nms=True, (1, 300, 6), given --decoder yolov8 and no num_classes
    was read as a two-class head of 300 anchors and exported: a bundle of nonsense boxes."""
    model = nms_rows_model(tmp_path / "nms.onnx")
    out = tmp_path / "out"
    result = _export(model, out, "-t", "x86-fp32", "--format", "onnx", "--task", "detect",
                     "--decoder", "yolov8")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in ("decoder yolov8 cannot read", "(1, 300, 6) looks like NMS rows",
                 "use decoder yolo-nms"):
        assert word in result.stderr, result.stderr
    assert not out.exists()


def test_yolo_nms_labels_naming_fewer_classes_than_the_model_gives_are_refused(tmp_path, data_dir):
    """yolo-nms never checked class ids against labels.txt (NMS rows do not show the class
    count): a model giving class 1 exported with one label wrote a bundle whose results mixed
    'person' and '1'."""
    rows = np.zeros((300, 6), np.float32)
    rows[0] = [10, 10, 40, 40, 0.9, 0]
    rows[1] = [20, 5, 60, 30, 0.8, 0]
    weights = np.zeros((3, 300 * 6), np.float32)
    weights[0, 6 + 5] = 10.0  # row 1's class follows the image's red mean: 0 on a blank input
    model = nms_rows_model(tmp_path / "nms.onnx", weights=weights, bias=rows)
    (tmp_path / "labels.txt").write_text("person\n")
    out = tmp_path / "out"
    result = _export(model, out, "-t", "x86-fp32", "--format", "onnx", "--task", "detect",
                     "--decoder", "yolo-nms", "--labels", tmp_path / "labels.txt",
                     "--eval", data_dir / "eval")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(error_lines(result.stderr)) == 1, result.stderr
    for word in ("yolo-nms: the model gave class id", "the bundle names 1 class in its labels",
                 "one name per class"):
        assert word in result.stderr, result.stderr
    assert not out.exists()
