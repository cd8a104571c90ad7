"""Long work says what it is doing when stderr goes to a log (nohup, CI, `2> export.log`): one
whole line per stage start and end, the guard's tries, no bars or carriage returns; `-q` writes
nothing but errors; on a terminal the bars stay and a stage's time ends its own line."""

from __future__ import annotations

import re
import sys

from optimize.progress import Progress
from tests.conftest import run_cli
from tests.optimize.fragile_models import cluster_images, fragile_classifier
from tests.optimize.tiny_models import tiny_classifier

TOOK = r"\d+\.\ds"


def _lines(text: str) -> list[str]:
    assert "\r" not in text, repr(text)
    assert text == "" or text.endswith("\n"), repr(text)  # no line left half-written
    return text.splitlines()


def test_an_export_into_a_log_shows_its_stages_and_quiet_shows_none(tmp_path):
    model = tiny_classifier(tmp_path / "tiny.onnx")
    args = ["export", model, "-t", "x86-fp32", "--format", "onnx", "--runs", "3"]
    logged = run_cli("edge-opt", *args, "--out", tmp_path / "logged")
    assert logged.returncode == 0, logged.stderr
    lines = _lines(logged.stderr)
    for desc in (f"loading {model}", "timing fp32 reference", "x86-fp32: onnx fp32",
                 "timing x86-fp32"):
        start = lines.index(f"  {desc} ...")
        assert any(re.fullmatch(rf"  {re.escape(desc)} \.\.\. {TOOK}", line)
                   for line in lines[start + 1:]), logged.stderr
    assert all(line.startswith("  ") for line in lines), logged.stderr
    assert "x86-fp32" in logged.stdout  # the summary table stays on stdout

    quiet = run_cli("edge-opt", *args, "-q", "--out", tmp_path / "quiet")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


TINY_NET = """
import torch


def build():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten())
"""


def test_a_pytorch_export_has_a_stage_line_for_its_conversion_to_onnx(tmp_path):
    """torch.onnx.export, onnxslim and the check against torch ran inside no stage: the log
    said 'loading net.py:build ... 0.4s', then nothing for as long as the conversion took."""
    (tmp_path / "net.py").write_text(TINY_NET)
    result = run_cli("edge-opt", "export", f"{tmp_path}/net.py:build", "--input-shape",
                     "1x3x16x16", "-t", "x86-fp32", "--format", "onnx", "--runs", "3",
                     "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stderr)
    desc = "exporting to ONNX (torch.onnx.export, onnxslim)"
    start = lines.index(f"  {desc} ...")
    assert lines.index(f"  loading {tmp_path}/net.py:build ...") < start, lines
    assert any(re.fullmatch(rf"  {re.escape(desc)} \.\.\. {TOOK}", line)
               for line in lines[start + 1:]), lines


def test_a_guard_search_in_a_log_names_each_try(tmp_path):
    """The guard's search is the longest silent stretch of an int8 export: each try is a line."""
    model = fragile_classifier(tmp_path / "fragile.onnx", False)
    result = run_cli("edge-opt", "export", model, "-t", "x86-int8", "--format", "onnx",
                     "--calib", cluster_images(tmp_path / "calib", 64, seed=1),
                     "--eval", cluster_images(tmp_path / "eval", 100, seed=2),
                     "--runs", "3", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stderr)
    start = lines.index("  x86-int8: onnx int8 ...")
    end = next(i for i, line in enumerate(lines)
               if re.fullmatch(rf"  x86-int8: onnx int8 \.\.\. {TOOK}", line))
    search = lines[start + 1:end]
    assert "trying other calibration methods" in search[0], result.stderr
    assert any(re.match(r"    calibration (percentile|entropy): loses", s) for s in search)
    assert any(re.match(r"    try 1/16, \d+ layer\(s\) in float: loses", s) for s in search)


def test_log_lines_are_whole_when_a_warning_comes_mid_stage(capsys):
    progress = Progress(terminal=False)
    with progress.stage("calibrating"):
        print("W: a library complains", file=sys.stderr)  # as a library's logging writes
        progress.note("trying entropy")
    with progress.bar(3, "reading images") as bar:
        bar.update(3)
    lines = _lines(capsys.readouterr().err)
    assert lines[:2] == ["  calibrating ...", "W: a library complains"]
    assert lines[-4] == "    trying entropy"
    assert re.fullmatch(rf"  calibrating \.\.\. {TOOK}", lines[-3])
    assert lines[-2] == "  reading images ..."
    assert re.fullmatch(rf"  reading images \.\.\. {TOOK}", lines[-1])


def test_a_terminal_keeps_one_line_per_stage_and_notes_on_their_own(capsys):
    progress = Progress(terminal=True)
    with progress.stage("loading"):
        pass
    progress.note("between stages")
    with progress.stage("x86-int8"):
        progress.note("over budget: searching")
        with progress.stage("inner"):
            pass
    err = capsys.readouterr().err
    assert re.fullmatch(rf"  loading \.\.\. {TOOK}\n    between stages\n  x86-int8 \.\.\.\n"
                        rf"    over budget: searching\n  inner \.\.\. {TOOK}\n"
                        rf"  x86-int8 \.\.\. {TOOK}\n", err), repr(err)


def test_quiet_writes_nothing_and_a_failed_stage_leaves_the_error_last(capsys):
    with Progress(enabled=False, terminal=False).stage("loading"):
        Progress(enabled=False).note("hidden")
    assert capsys.readouterr().err == ""
    progress = Progress(terminal=True)
    try:
        with progress.stage("loading"):
            raise ValueError("broken")
    except ValueError:
        pass
    assert capsys.readouterr().err == "  loading ...\n"  # ended, no time: the error follows
