"""`edge-run` as a user runs it: a detector on a video with every output, and every mistake
answered in one or two lines with a non-zero exit and no traceback."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT, error_lines, run_cli
from tests.edge_sdk.bundles import write_bundle
from tests.edge_sdk.test_pipeline import FRAMES, ZONES, synthetic_frame


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The synthetic two-box scene as a real video file (MJPG, 10 fps)."""
    path = tmp_path_factory.mktemp("clip") / "boxes.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (640, 480))
    for t in range(FRAMES):
        writer.write(synthetic_frame(t))
    writer.release()
    return path


@pytest.fixture
def files(tmp_path, detector_bundle, classifier_bundle, clip):
    (tmp_path / "zones.json").write_text(json.dumps(ZONES))
    (tmp_path / "broken.json").write_text("{zones: ")
    (tmp_path / "bad_zone.json").write_text(json.dumps(
        {"zones": [{"name": "door", "polygon": [[0, 0], [10, 0]]}]}))  # fmt: skip
    (tmp_path / "empty").mkdir()
    (tmp_path / "not_a_bundle").mkdir()
    (tmp_path / "corrupt.avi").write_bytes(b"\0\1garbage" * 200)
    (tmp_path / "empty_name.txt").write_text(f"# cameras\n{clip}\n=\n")
    (tmp_path / "path_name.txt").write_text(f"cam/../x={clip}\n")
    (tmp_path / "no_source.txt").write_text("door=\n")
    model = detector_bundle.parent.parent / "det.onnx"  # the ONNX model the bundle came from
    return {"dir": tmp_path, "det": detector_bundle, "cls": classifier_bundle, "clip": clip,
            "model": model, "out": detector_bundle.parent}


def test_detector_on_a_video_writes_every_output(files):
    d = files["dir"]
    result = run_cli("edge-run", files["det"], "--source", files["clip"], "--zones",
                     d / "zones.json", "--save", d / "out.mp4", "--jsonl", d / "out.jsonl",
                     "--events", d / "events.jsonl")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # results went to the files named
    records = [json.loads(line) for line in (d / "out.jsonl").read_text().splitlines()]
    frames = [r for r in records if "frame" in r]
    assert [r["frame"] for r in frames] == list(range(FRAMES))
    assert all(len(r["tracker_ids"]) == 2 for r in frames[2:])
    assert records[-1]["end"] is True  # the tracks still open at the end
    events = [json.loads(line) for line in (d / "events.jsonl").read_text().splitlines()]
    types = [e["type"] for e in events]
    assert types.count("track_started") == 2 and types.count("line_crossed") == 2
    assert types.count("track_ended") == 2 and "zone_entered" in types
    video = cv2.VideoCapture(str(d / "out.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    assert f"{FRAMES} frames in" in result.stderr and "latency ms" in result.stderr
    assert "line_crossed 2" in result.stderr and "dropped: source 0" in result.stderr
    # the events file holds fewer lines than frames: the summary counts frames, and says so
    assert f"sink events events.jsonl: {FRAMES} frames handled" in result.stderr


def test_without_outputs_results_go_to_stdout(files):
    result = run_cli("edge-run", files["det"], "--source", files["clip"], "--max-frames", "5",
                     "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["frame"] for r in records if "frame" in r] == [0, 1, 2, 3, 4]
    assert result.stderr == ""


def test_classifier_on_a_folder(files, data_dir):
    result = run_cli("edge-run", files["cls"], "--source", data_dir / "eval", "--max-frames",
                     "4", "--jsonl", files["dir"] / "cls.jsonl")  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (files["dir"] / "cls.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["source"].endswith(".jpg") for r in records)
    assert "input drift" not in result.stderr  # the tiny bundle has no calibration stats


# fmt: off
CASES = [
    # (id, args, words the message must contain)
    ("missing bundle", ["{dir}/nothing", "--source", "{clip}"], ["does not exist"]),
    ("not a bundle", ["{dir}/not_a_bundle", "--source", "{clip}"], ["manifest.json"]),
    ("missing source", ["{det}", "--source", "{dir}/nope.mp4"], ["not found", "camera index"]),
    ("not a video", ["{det}", "--source", "{dir}/corrupt.avi"], ["cannot open", "corrupt.avi"]),
    ("empty folder", ["{det}", "--source", "{dir}/empty"], ["has no images"]),
    ("stream nobody serves", ["{det}", "--source", "rtsp://127.0.0.1:1/cam"],
     ["cannot open", "rtsp://127.0.0.1:1/cam"]),
    ("zones file missing", ["{det}", "--source", "{clip}", "--zones", "{dir}/no.json"],
     ["no.json", "not found"]),
    ("zones not JSON", ["{det}", "--source", "{clip}", "--zones", "{dir}/broken.json"],
     ["not valid JSON"]),
    ("zone polygon too short", ["{det}", "--source", "{clip}", "--zones",
                                "{dir}/bad_zone.json"], ["zones[0]", "at least 3 points"]),
    ("zones on a classifier", ["{cls}", "--source", "{clip}", "--zones", "{dir}/zones.json"],
     ["--zones needs a detection bundle"]),
    ("tracker on a classifier", ["{cls}", "--source", "{clip}", "--tracker", "bytetrack"],
     ["tracking needs a detection model"]),
    ("unknown tracker", ["{det}", "--source", "{clip}", "--tracker", "sort9"],
     ["unknown tracker", "bytetrack"]),
    ("video into a missing folder", ["{det}", "--source", "{clip}", "--save",
                                     "{dir}/no/out.mp4"], ["does not exist"]),
    ("video format", ["{det}", "--source", "{clip}", "--save", "{dir}/out.gif"],
     ["use one of", ".mp4"]),
    ("mqtt without device id", ["{det}", "--source", "{clip}", "--mqtt", "mqtt://127.0.0.1:1"],
     ["--device-id"]),
    ("model file for a bundle", ["{model}", "--source", "{clip}"],
     ["det.onnx is a model file, not a bundle folder", "edge-opt export {model} --target",
      "--out DIR", "pass DIR/TARGET"]),
    ("a bundle's own file", ["{det}/model.onnx", "--source", "{clip}"],
     ["is a file of the bundle", "pass the bundle folder {det}"]),
    ("export folder for a bundle", ["{out}", "--source", "{clip}"],
     ["{out} is an `edge-opt export` output folder, not a bundle", "x86-fp32",
      "e.g. {out}/x86-fp32"]),
    ("a video for a bundle", ["{clip}", "--source", "{clip}"],
     ["boxes.avi is a file, not a bundle folder", "manifest.json"]),
    ("sources: empty name", ["{det}", "--sources", "{dir}/empty_name.txt"],
     ["empty_name.txt line 3", "the name is empty", "NAME=SOURCE"]),
    ("sources: a path as name", ["{det}", "--sources", "{dir}/path_name.txt"],
     ["path_name.txt line 1", "'cam/../x' is a path", "'/' and '..'", "letters, digits",
      "out.NAME.jsonl"]),
    ("sources: no source", ["{det}", "--sources", "{dir}/no_source.txt"],
     ["no_source.txt line 1", "no source after 'door='"]),
    ("too many workers", ["{det}", "--source", "{clip}", "--source", "{clip}", "--workers",
                          "100000"], ["--workers", "at most 64", "got 100000"]),
    ("max frames below 1", ["{det}", "--source", "{clip}", "--max-frames", "-3"],
     ["--max-frames must be at least 1"]),
]
# fmt: on


@pytest.mark.parametrize(("args", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_mistakes_get_a_clear_error(files, args, words):
    args = [a.format(**files) for a in args]
    result = run_cli("edge-run", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)  # after the model's loading line, if it got that far
    assert 1 <= len(lines) <= 2, result.stderr
    assert lines[0].startswith("edge-run: error:")
    for word in words:
        assert word.format(**files) in result.stderr, result.stderr


# (id, flag and value, words of argparse's message)
NUMBERS = [
    ("threads absurd", ["--threads", "100000"], ["--threads: at most 256, got 100000",
                                                 "OS thread"]),
    ("threads negative", ["--threads", "-3"], ["--threads: must be at least 1, got -3",
                                               "omit --threads for the profile's count"]),
    ("threads 0", ["--threads", "0"], ["must be at least 1, got 0"]),
    ("threads not a number", ["--threads", "two"], ["'two' is not a whole number"]),
    ("max batch negative", ["--max-batch", "-1"], ["--max-batch: must be at least 1"]),
    ("max wait negative", ["--max-wait-ms", "-5"], ["--max-wait-ms: must be from 0 to 1000"]),
    ("max wait NaN", ["--max-wait-ms", "nan"], ["must be from 0 to 1000 ms, got nan"]),
    ("max wait inf", ["--max-wait-ms", "inf"], ["must be from 0 to 1000 ms, got inf"]),
]


@pytest.mark.parametrize(("flag", "words"), [c[1:] for c in NUMBERS], ids=[c[0] for c in NUMBERS])
def test_numeric_flags_out_of_range_are_usage_errors(files, flag, words):
    result = run_cli("edge-run", files["det"], "--source", files["clip"], "--max-frames", "3",
                     *flag, timeout=60)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("usage: edge-run BUNDLE"), result.stderr
    for word in words:
        assert word in lines[1], result.stderr


def test_threads_within_the_ceiling_runs(files):
    result = run_cli("edge-run", files["det"], "--source", files["clip"], "--max-frames", "3",
                     "--threads", "3", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["frame"] for r in records if "frame" in r] == [0, 1, 2]


def test_store_errors_name_the_cli_flags(files):
    from optimize.signing import keygen

    _, public = keygen(files["dir"] / "fleet")

    def store(*args):
        return run_cli("edge-run", "--store", files["dir"] / "store", "--source", files["clip"],
                       "--mqtt", "mqtt://127.0.0.1:1", "--device-id", "cam", *args, timeout=60)

    result = store("--seed", files["det"], "--trust", public)  # the bundle is unsigned
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not signed" in lines[0], result.stderr
    assert "edge-opt sign" in lines[0] and "edge-run without --trust" in lines[0]
    result = store("--seed", files["model"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is a model file" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def tiny_classifier_bundle(tmp_path):
    return write_bundle(tmp_path / "bundle")


# (id, how to make the source, extra args, exit code, words stderr must contain)
NOTHING_DONE = [
    ("unreadable images", "bad/", [], 1, ["no frames", "skipped 2", "a.jpg", "b.png"]),
    ("0-byte JPEG", "zero.jpg", [], 1, ["no frames", "skipped 1", "zero.jpg"]),
    ("empty --source", "", [], 2, ["--source is empty"]),
    ("video sink failed", "ok.jpg", ["--save", "/proc/x.mp4"], 1,
     ["x.mp4", "failed", "cannot write"]),
    ("one good, one bad image", "mixed/", [], 0, ["1 frames", "skipped 1", "c.jpg"]),
]


@pytest.mark.parametrize(("source", "extra", "code", "words"), [c[1:] for c in NOTHING_DONE],
                         ids=[c[0] for c in NOTHING_DONE])
def test_run_that_processed_nothing_or_lost_an_output_exits_non_zero(
        tmp_path, tiny_classifier_bundle, source, extra, code, words):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"garbage")
    (tmp_path / "bad" / "b.png").write_bytes(b"\x89PNG nope")
    (tmp_path / "zero.jpg").write_bytes(b"")
    frame = np.full((40, 60, 3), 100, np.uint8)
    cv2.imwrite(str(tmp_path / "ok.jpg"), frame)
    (tmp_path / "mixed").mkdir()
    cv2.imwrite(str(tmp_path / "mixed" / "a_ok.jpg"), frame)
    (tmp_path / "mixed" / "c.jpg").write_bytes(b"")
    result = run_cli("edge-run", tiny_classifier_bundle, "--source",
                     str(tmp_path / source) if source else "", *extra, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.mark.parametrize("args", [["--store", "--help"], ["--store", "/nonexistent", "-h"]],
                         ids=["no-dir", "with-dir"])
def test_store_help_is_shown_as_edge_run_help_says(args):
    """`edge-run --help` points fleet devices at `edge-run --store --help`: that must print the
    store mode's options, not a usage error about --store's missing folder."""
    result = run_cli("edge-run", *args, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--seed BUNDLE" in result.stdout and "--trust KEY.pub" in result.stdout
    assert result.stderr == ""


def test_the_model_load_is_a_stage_line_on_stderr_with_its_time(tiny_classifier_bundle, clip):
    # edge-run said nothing while the runtime loaded the model (minutes for an OpenVINO
    # compile or a TensorRT engine build on a device)
    result = run_cli("edge-run", tiny_classifier_bundle, "--source", clip, "--max-frames", "2",
                     "--threads", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"edge-run: loading {tiny_classifier_bundle} (onnxruntime, 2 threads) ..."
    assert re.fullmatch(rf"edge-run: loaded {re.escape(str(tiny_classifier_bundle))} in "
                        r"\d+\.\d s", lines[1]), lines[1]  # fmt: skip
    assert [json.loads(line)["frame"] for line in result.stdout.splitlines()
            if "frame" in json.loads(line)] == [0, 1]  # stdout stays results only


def test_store_mode_says_it_loads_the_model_as_edge_run_does(tiny_classifier_bundle, clip,
                                                              tmp_path):
    """`edge-run --store` (a fleet device) said nothing while the runtime loaded its bundle,
    where edge-run without --store has a loading line; -q still hides it. The seed is
    loaded once to check it before it enters the store, then from the store."""
    args = ["--store", tmp_path / "store", "--source", clip, "--max-frames", "1", "--mqtt",
            "mqtt://127.0.0.1:1", "--device-id", "cam", "--seed", tiny_classifier_bundle]
    result = run_cli("edge-run", *args, timeout=120)
    assert result.returncode == 0, result.stderr
    loading = [line for line in result.stderr.splitlines() if line.startswith("edge-run: load")]
    seed, active = str(tiny_classifier_bundle), str(tmp_path / "store")
    assert loading[0] == f"edge-run: loading {seed} (onnxruntime, 1 thread) ...", loading
    assert re.fullmatch(rf"edge-run: loaded {re.escape(seed)} in \d+\.\d s", loading[1])
    assert re.fullmatch(rf"edge-run: loading {re.escape(active)}/\S+ \(onnxruntime, 1 thread"
                        r"\) \.\.\.", loading[2]), loading  # fmt: skip
    assert re.fullmatch(rf"edge-run: loaded {re.escape(active)}/\S+ in \d+\.\d s", loading[3])
    assert len(loading) == 4, result.stderr
    quiet = run_cli("edge-run", *args, "-q", timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    assert "edge-run: load" not in quiet.stderr, quiet.stderr


def test_on_a_terminal_the_load_time_ends_the_loading_line(tiny_classifier_bundle, clip):
    main, tty = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "edge_sdk.cli", str(tiny_classifier_bundle),
                               "--source", str(clip), "--max-frames", "1", "--threads", "1"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=tty, timeout=120)
        os.close(tty)
        tty = -1
        out = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child's side is closed and everything was read
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(main)
        if tty >= 0:
            os.close(tty)
    assert proc.returncode == 0, out
    first = out.decode().splitlines()[0]
    assert re.fullmatch(rf"edge-run: loading {re.escape(str(tiny_classifier_bundle))} "
                        r"\(onnxruntime, 1 thread\) \.\.\. \d+\.\d s", first), first
