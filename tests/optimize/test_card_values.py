"""A model card (`edge-opt export --card FILE`) with a value of the wrong type is one line naming
the file, the key and what it must be, not a traceback (some came only after all the export
work); the forms the flags accept (`mean: 127`, "127,127,127") and Ultralytics' labels mapping
({0: cat, 1: dog}) are read as such."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import error_lines, run_cli
from tests.optimize.tiny_models import tiny_classifier


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("model") / "tiny.onnx")  # 4 classes


def _export(tiny: Path, card: Path, out: Path):
    return run_cli("edge-opt", "export", tiny, "-t", "x86-fp32", "--format", "onnx",
                   "--runs", "1", "--card", card, "--out", out)


BAD_CARDS = [
    # (id, card text, words the message must contain besides the card's path)
    ("pad_value text", "preprocess:\n  resize: letterbox\n  pad_value: gray\n",
     ["preprocess.pad_value", "integer 0-255", "'gray'"]),
    ("pad_value 300", "preprocess:\n  pad_value: 300\n", ["preprocess.pad_value", "0-255"]),
    ("mean text", 'preprocess:\n  mean: "127,abc,127"\n', ["preprocess.mean", "numbers"]),
    ("mean list of lists", "preprocess:\n  mean: [[1, 2], 3]\n", ["preprocess.mean", "numbers"]),
    ("std true", "preprocess:\n  std: true\n", ["preprocess.std", "number"]),
    ("resize list", "preprocess:\n  resize: [letterbox]\n",
     ["preprocess.resize", "letterbox"]),
    ("preprocess list", "preprocess:\n  - resize\n", ["preprocess", "mapping"]),
    ("decoder_params list", "task: classify\ndecoder: topk\ndecoder_params: [5]\n",
     ["decoder_params", "mapping"]),
    ("task list", "task: [classify]\n", ["task", "name"]),
    ("labels number", "labels: 5\n", ["labels", "list of class names"]),
    ("labels null name", "labels: [cat, dog, null, fish]\n", ["labels[2]", "class name"]),
    ("labels gap", "labels: {0: cat, 1: dog, 3: fish}\n", ["labels", "0..2", "missing [2]"]),
    ("labels bad key", "labels: {a: cat}\n", ["labels", "class index"]),
    ("deep nesting", "task: " + "[" * 5000 + "]" * 5000 + "\n", ["nested too deeply"]),
]


@pytest.mark.parametrize("text,words", [c[1:] for c in BAD_CARDS], ids=[c[0] for c in BAD_CARDS])
def test_wrong_card_value_is_one_line(tmp_path, tiny, text, words):
    card = tmp_path / "card.yaml"
    card.write_text(text)
    result = _export(tiny, card, tmp_path / "out")
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    for word in [str(card), *words]:
        assert word in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()  # refused before any work


def _input(out: Path) -> dict:
    return json.loads((out / "x86-fp32" / "manifest.json").read_text())["inputs"][0]


def test_card_takes_the_forms_the_flags_take(tmp_path, tiny):
    card = tmp_path / "card.yaml"
    card.write_text("task: classify\npreprocess:\n  mean: 127\n  std: '128'\n  pad_value: 0\n")
    result = _export(tiny, card, tmp_path / "scalar")
    assert result.returncode == 0, result.stderr
    spec = _input(tmp_path / "scalar")
    assert spec["mean"] == [127.0] * 3 and spec["std"] == [128.0] * 3 and spec["pad_value"] == 0

    card.write_text('preprocess:\n  mean: "123.7, 116.3,103.5"\n  std: [58.4, 57, 57.4]\n')
    result = _export(tiny, card, tmp_path / "text")
    assert result.returncode == 0, result.stderr
    spec = _input(tmp_path / "text")
    assert spec["mean"] == [123.7, 116.3, 103.5] and spec["std"] == [58.4, 57.0, 57.4]


@pytest.mark.parametrize("text", [
    "labels:\n  0: cat\n  1: dog\n  2: bird\n  3: fish\n",  # Ultralytics' names
    json.dumps({"labels": {"2": "bird", "0": "cat", "3": "fish", "1": "dog"}}),  # JSON keys
], ids=["yaml mapping", "json mapping"])
def test_labels_mapping_becomes_the_class_list(tmp_path, tiny, text):
    card = tmp_path / "card.yaml"
    card.write_text(text)
    result = _export(tiny, card, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "x86-fp32" / "labels.txt").read_text() == "cat\ndog\nbird\nfish\n"


def test_labels_that_do_not_match_the_classes_and_negative_guard_tries(tiny, tmp_path):
    """--labels with 3 names for a 4-class model was accepted (results mixed names and class
    numbers); --guard-tries -5 was accepted."""
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    done = run_cli("edge-opt", "export", tiny, "-t", "x86-fp32", "--format", "onnx", "--runs",
                   "1", "--labels", tmp_path / "labels.txt", "--out", tmp_path / "out")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "the labels name 3 classes but the model outputs 4" in done.stderr
    assert not (tmp_path / "out").exists()
    done = run_cli("edge-opt", "export", tiny, "-t", "x86-fp32", "--guard-tries", "-5",
                   "--out", tmp_path / "out")
    assert done.returncode == 2 and "--guard-tries: must be 0 or more, got -5" in done.stderr


def test_labels_that_do_not_match_a_detectors_classes(tmp_path):
    """Three names for a detector of two classes (num_classes from --decoder-params, or from
    Ultralytics metadata) were accepted: every detection of class 0 was then reported under
    the first name, class 2's name never."""
    from tests.optimize.test_bench import DETECT_FLAGS, tiny_detector

    model = tiny_detector(tmp_path / "det.onnx")
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    done = run_cli("edge-opt", "export", model, "-t", "x86-fp32", "--runs", "1", *DETECT_FLAGS,
                   "--labels", tmp_path / "labels.txt", "--out", tmp_path / "out")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(error_lines(done.stderr)) <= 2, done.stderr
    assert "the labels name 3 classes but the model detects 2" in done.stderr
    assert not (tmp_path / "out").exists()
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    done = run_cli("edge-opt", "export", model, "-t", "x86-fp32", "--runs", "1", *DETECT_FLAGS,
                   "--labels", tmp_path / "labels.txt", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
