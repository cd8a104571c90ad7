"""`edge-run` never destroys what it reads or what an earlier run wrote, and never calls a run
complete that was not: each case here once exited 0 or lost a file.

- `--save clip.avi --source clip.avi` overwrote the video being read (29 of 180 frames done);
- `--jsonl x --events x` interleaved two writers into one file;
- a run that failed to start (a mistyped source) first emptied the last run's results;
- a video cut short ended as if complete;
- a webhook nobody answered was reported as "errors 0".
"""

from __future__ import annotations

import hashlib
import shutil
import socket

from tests.conftest import run_cli


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_output_that_is_an_input_is_refused_before_anything_is_written(
        tmp_path, data_dir, detector_bundle):  # fmt: skip
    clip = tmp_path / "clip.avi"
    shutil.copy(data_dir / "vtest_short.avi", clip)
    before, model = digest(clip), digest(detector_bundle / "model.onnx")
    cases = [
        (["--save", clip], "--save", "is the source being read"),
        (["--jsonl", tmp_path / "a.jsonl", "--events", tmp_path / "a.jsonl"], "--events",
         "is also the file of --jsonl"),
        (["--jsonl", detector_bundle / "model.onnx"], "--jsonl", "is inside the bundle folder"),
    ]  # fmt: skip
    for flags, flag, said in cases:
        result = run_cli("edge-run", detector_bundle, "--source", clip, *flags, timeout=120)
        assert result.returncode == 2, result.stderr
        assert flag in result.stderr and said in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert digest(clip) == before and digest(detector_bundle / "model.onnx") == model
    assert not (tmp_path / "a.jsonl").exists()


def test_a_run_that_cannot_start_leaves_the_last_results_alone(tmp_path, data_dir,
                                                               detector_bundle):
    results, events = tmp_path / "results.jsonl", tmp_path / "events.jsonl"
    results.write_text('{"precious": 1}\n')
    events.write_text('{"precious": 2}\n')
    for mistake in (["--source", tmp_path / "typo.mp4"],
                    ["--source", data_dir / "vtest_short.avi", "--zones", tmp_path / "no.json"]):
        result = run_cli("edge-run", detector_bundle, *mistake, "--jsonl", results,
                         "--events", events, timeout=120)  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert results.read_text() == '{"precious": 1}\n'
        assert events.read_text() == '{"precious": 2}\n'
    result = run_cli("edge-run", detector_bundle, "--source", data_dir / "vtest_short.avi",
                     "--max-frames", "3", "--jsonl", results, "-q", timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(results.read_text().splitlines()) >= 3 and "precious" not in results.read_text()


def test_a_video_cut_short_is_a_failed_run(tmp_path, data_dir, detector_bundle):
    cut = tmp_path / "cut.avi"
    cut.write_bytes((data_dir / "vtest_short.avi").read_bytes()[:100_000])
    result = run_cli("edge-run", detector_bundle, "--source", cut, "--jsonl",
                     tmp_path / "r.jsonl", timeout=120)  # fmt: skip
    assert result.returncode == 1, result.stderr
    said = "of the 180 frames its header announces; it may be truncated or damaged"
    assert said in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("[source] failed") == 1, result.stderr  # said once, not twice


def test_a_webhook_nobody_answers_fails_the_run(tmp_path, data_dir, detector_bundle):
    with socket.socket() as s:  # a loopback port with nothing listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_cli("edge-run", detector_bundle, "--source", data_dir / "vtest_short.avi",
                     "--max-frames", "40", "--webhook", f"http://127.0.0.1:{port}/hook",
                     timeout=180)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"output webhook 127.0.0.1:{port} failed: it lost" in result.stderr, result.stderr
    assert "errors 0" not in result.stderr.split(f"sink webhook 127.0.0.1:{port}")[1][:60]
