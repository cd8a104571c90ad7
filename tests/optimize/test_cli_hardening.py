"""Issue 10, CLI items 12, 13, 17 and 18: what an outside review broke in `edge-opt`. Each test
runs the real command line on real tiny models, as a user would."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import error_lines, run_cli
from tests.optimize.real_models import model_path
from tests.optimize.tiny_models import tiny_classifier

NET = '''
import torch
def build():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten())
'''


def _assert_one_line_error(result, *words: str) -> None:
    """Non-zero exit, one or two lines on stderr, no traceback, the words the fix needs."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result.stderr)
    assert 1 <= len(lines) <= 2, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (links as their target)."""
    return {str(p.relative_to(folder)): (os.readlink(p).encode() if p.is_symlink()
                                         else p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()}


@pytest.fixture
def tiny(tmp_path) -> Path:
    return tiny_classifier(tmp_path / "tiny.onnx")


def test_export_never_deletes_what_edge_opt_did_not_write(tmp_path, tiny):
    out = tmp_path / "out"
    (out / "x86-fp32").mkdir(parents=True)
    (out / "x86-fp32" / "thesis.tex").write_text("two years of work\n")
    (out / "report.md").write_text("# my own notes\n")
    before = _snapshot(out)
    args = ["export", tiny, "-t", "x86-fp32", "--format", "onnx", "--runs", "3", "--out", out]

    _assert_one_line_error(run_cli("edge-opt", *args), "x86-fp32", "--overwrite")
    assert _snapshot(out) == before

    (out / "x86-fp32" / "thesis.tex").unlink()  # the bundle folder is now empty: usable
    _assert_one_line_error(run_cli("edge-opt", *args), "report.md", "--overwrite")
    (out / "report.md").unlink()

    first = run_cli("edge-opt", *args)
    assert first.returncode == 0, first.stderr
    again = run_cli("edge-opt", *args)  # its own bundle and report: replaced
    assert again.returncode == 0, again.stderr
    manifest = json.loads((out / "x86-fp32" / "manifest.json").read_text())
    assert manifest["created_by"].startswith("edge-opt")
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "x86-fp32"]

    (out / "elsewhere").mkdir()
    (out / "elsewhere" / "data.csv").write_text("1,2\n")
    forced = run_cli("edge-opt", "export", tiny, "-t", "x86-fp32", "--format", "onnx",
                     "--runs", "3", "--out", out / "elsewhere", "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert (out / "elsewhere" / "data.csv").read_text() == "1,2\n"  # not a bundle folder


@pytest.fixture
def inputs(tmp_path, data_dir, tiny) -> dict:
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "broken.yaml").write_text("task: classify\npreprocess: [mean: 1\n")
    (tmp_path / "foo.yaml").write_text("task: classify\nfoo: 1\n")
    linked = tmp_path / "linked"
    linked.mkdir()
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "keep.txt").write_text("keep\n")
    (linked / "x86-fp32").symlink_to(tmp_path / "precious")
    calib = tmp_path / "calib"
    shutil.copytree(data_dir / "calib", calib)
    return {"model": tiny, "dir": tmp_path, "calib": calib, "data": data_dir / "eval"}


BAD_FLAGS = [
    # (id, args, words the message must contain)
    ("export --runs 0", ["export", "{model}", "-t", "x86-fp32", "--runs", "0"],
     ["--runs", "at least 1"]),
    ("export --runs -1", ["export", "{model}", "-t", "x86-fp32", "--runs", "-1"],
     ["--runs", "at least 1"]),
    ("export --calib-size -5", ["export", "{model}", "-t", "x86-int8", "--calib", "{calib}",
                                "--calib-size", "-5"], ["--calib-size", "at least 1"]),
    ("export absurd --input-shape", ["export", "{dir}/net.py:build", "-t", "x86-fp32",
                                     "--input-shape", "1x3x99999999999999999999x32"],
     ["--input-shape", "1x3x640x640"]),
    ("export binary --labels", ["export", "{model}", "-t", "x86-fp32", "--labels",
                                "{dir}/binary.bin"], ["labels file", "not UTF-8 text"]),
    ("export binary --card", ["export", "{model}", "-t", "x86-fp32", "--card",
                              "{dir}/binary.bin"], ["model card", "not UTF-8 text"]),
    ("export --out is a file", ["export", "{model}", "-t", "x86-fp32", "--out", "{dir}/a_file"],
     ["not a folder"]),
    ("export --out under a file", ["export", "{model}", "-t", "x86-fp32", "--out",
                                   "{dir}/a_file/out"], ["not a folder", "is a file"]),
    ("export --out unwritable", ["export", "{model}", "-t", "x86-fp32", "--out",
                                 "/proc/edge-out"], ["cannot write in /proc"]),
    ("export symlinked OUT/TARGET", ["export", "{model}", "-t", "x86-fp32", "--format", "onnx",
                                     "--out", "{dir}/linked", "--overwrite"],
     ["symbolic link"]),
    ("export --std 0", ["export", "{model}", "-t", "x86-fp32", "--std", "0"],
     ["--std", "above 0"]),
    ("export --crop-fraction 5", ["export", "{model}", "-t", "x86-fp32", "--resize",
                                  "center-crop", "--crop-fraction", "5"],
     ["--crop-fraction", "(0, 1]"]),
    ("export --max-drop -3", ["export", "{model}", "-t", "x86-int8", "--calib", "{calib}",
                              "--max-drop", "-3"], ["--max-drop -3", "cannot be negative"]),
    ("export --max-drop nan", ["export", "{model}", "-t", "x86-int8", "--calib", "{calib}",
                               "--max-drop", "nan"], ["--max-drop", "finite"]),
    ("export the same --target twice", ["export", "{model}", "-t", "x86-fp32", "-t",
                                        "x86-fp32"], ["x86-fp32 given more than once"]),
    ("export --opset 3", ["export", "{model}", "-t", "x86-fp32", "--opset", "3"],
     ["--opset", "13-21"]),
    ("export --opset for an ONNX model", ["export", "{model}", "-t", "x86-fp32", "--opset",
                                          "17"], ["--opset 17 applies to PyTorch models",
                                                  "drop --opset"]),
    ("export --labels folder", ["export", "{model}", "-t", "x86-fp32", "--labels", "{calib}"],
     ["labels file", "is a folder"]),
    ("export broken --card", ["export", "{model}", "-t", "x86-fp32", "--card",
                              "{dir}/broken.yaml"],
     ["not valid YAML/JSON at line 3", "fix that line"]),
    ("export unknown card key", ["export", "{model}", "-t", "x86-fp32", "--card",
                                 "{dir}/foo.yaml"], ["unknown keys ['foo']"]),
    ("bench --runs 0", ["bench", "{model}", "-t", "x86-fp32", "--data", "{data}", "--runs", "0"],
     ["--runs", "at least 1"]),
    ("bench --calib-size -5", ["bench", "{model}", "-t", "x86-int8", "--calib", "{calib}",
                               "--calib-size", "-5", "--data", "{data}"],
     ["--calib-size", "at least 1"]),
    ("bench absurd --input-shape", ["bench", "{dir}/net.py:build", "-t", "x86-fp32",
                                    "--input-shape", "1x3x99999999999999999999x32", "--data",
                                    "{data}"], ["--input-shape"]),
    ("bench binary --labels", ["bench", "{model}", "-t", "x86-fp32", "--labels",
                               "{dir}/binary.bin", "--data", "{data}"], ["not UTF-8 text"]),
    ("bench binary --card", ["bench", "{model}", "-t", "x86-fp32", "--card",
                             "{dir}/binary.bin", "--data", "{data}"], ["not UTF-8 text"]),
    ("bench --out is a file", ["bench", "{model}", "-t", "x86-fp32", "--data", "{data}",
                               "--out", "{dir}/a_file"], ["not a folder"]),
    ("bench --out unwritable", ["bench", "{model}", "-t", "x86-fp32", "--data", "{data}",
                                "--out", "/proc/edge-bench"], ["cannot write in /proc"]),
]


@pytest.mark.parametrize(("args", "words"), [c[1:] for c in BAD_FLAGS],
                         ids=[c[0] for c in BAD_FLAGS])
def test_bad_flag_values_are_one_line_errors_not_tracebacks(inputs, args, words):
    args = [a.format(**inputs) for a in args]
    if "--out" not in args:
        args += ["--out", str(inputs["dir"] / "out")]
    before = _snapshot(inputs["dir"])
    _assert_one_line_error(run_cli("edge-opt", *args), *words)
    assert _snapshot(inputs["dir"]) == before  # nothing deleted, changed or left behind


def test_a_mask_model_is_not_exported_as_a_classifier(tmp_path):
    """--task classify on MediaPipe's person mask ([1, 1, 256, 256]) made a "classifier" of
    65536 classes that edge-run then reported as top-5 pixels."""
    result = run_cli("edge-opt", "export", model_path("selfie_segmentation"), "-t", "x86-fp32",
                     "--format", "onnx", "--task", "classify", "--out", tmp_path / "out")
    _assert_one_line_error(result, "--task classify", "[1, 1, 256, 256]", "--task segment")
    assert not (tmp_path / "out").exists()


def test_openvino_int4_record_is_read_from_the_compressed_model(tmp_path):
    """The record said convolutions became int8 as a constant sentence, and schemes.yaml said
    they kept float weights; the record now counts what the saved model holds."""
    import openvino as ov

    from device_profiles import load_schemes
    from tests.optimize.tiny_models import depthwise_classifier

    model = depthwise_classifier(tmp_path / "dw.onnx")
    out = tmp_path / "out"
    result = run_cli("edge-opt", "export", model, "-t", "x86-int4", "--runs", "3", "--out", out)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "x86-int4" / "manifest.json").read_text())["quantization"]
    assert record["weights"] == {"Convolution": {"int8": 1}, "GroupConvolution": {"int8": 1},
                                 "MatMul": {"int4": 1}}
    from optimize.formats.openvino import weight_precisions

    saved = ov.Core().read_model(str(out / "x86-int4" / "model.xml"))
    assert record["weights"] == weight_precisions(saved)
    assert record["int8_weights"] == {"Convolution": 1, "GroupConvolution": 1}
    assert record["int4_weights"] == {"MatMul": 1} and record["float_weights"] == {}
    scheme = load_schemes()["nncf-int4"]
    assert "keep their float weights" not in scheme["description"]
    assert "8-bit" in scheme["description"]


def _memory_hungry(path: Path) -> Path:
    """A 1 KB classifier whose runtime needs ~650 MB: its input tiled to 1x3x4096x13312
    (Tile), averaged per channel, then a Gemm to 4 classes."""
    import numpy as np
    from onnx import helper, numpy_helper

    from tests.optimize.tiny_models import save_model

    inits = [numpy_helper.from_array(np.array([1, 1, 128, 416], np.int64), "repeats"),
             numpy_helper.from_array(np.eye(4, 3, dtype=np.float32), "fc_w")]
    nodes = [helper.make_node("Tile", ["input", "repeats"], ["tiled"]),
             helper.make_node("ReduceMean", ["tiled"], ["mean"], axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["mean", "fc_w"], ["output"], transB=1)]
    model = save_model(path, "hungry", nodes, inits, 32, 4)
    assert model.stat().st_size < 4096
    return model


def test_memory_budget_is_checked_against_the_runtime_not_the_file_size(tmp_path, tiny):
    """rpi4 has 512 MB: a 1 KB model passed the file-size check whatever its runtime needs."""
    out = tmp_path / "out"
    (out / "rpi4-fp32").mkdir(parents=True)
    (out / "rpi4-fp32" / "keep.txt").write_text("not a bundle\n")
    before = _snapshot(out)
    hungry = _memory_hungry(tmp_path / "hungry.onnx")
    result = run_cli("edge-opt", "export", hungry, "-t", "rpi4-fp32", "--format", "onnx",
                     "--runs", "1", "--out", out, "--overwrite")
    _assert_one_line_error(result, "rpi4-fp32", "memory budget of 512 MB", "MB of memory")
    assert _snapshot(out) == before  # over budget: nothing written, nothing replaced

    ok = run_cli("edge-opt", "export", tiny, "-t", "rpi4-fp32", "--format", "onnx",
                 "--runs", "3", "--out", out / "tiny")
    assert ok.returncode == 0, ok.stderr
    peak = json.loads((out / "tiny" / "rpi4-fp32" / "manifest.json").read_text()
                      )["metrics"]["peak_rss_bytes"]
    assert 10 * 2**20 < peak < 512 * 2**20
    assert f"{peak / 2**20:.0f} MB resident" in (out / "tiny" / "report.md").read_text()
    assert "Peak memory" in (out / "tiny" / "rpi4-fp32" / "report.md").read_text()
