"""Stopping a multi-source edge-run with Ctrl-C (SIGINT) or a service manager's SIGTERM: every
source's files are closed and complete (the video playable, the JSON lines whole)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import cv2
import pytest

from tests.conftest import ROOT


def _lines(path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


@pytest.mark.parametrize(("sig", "times"), [(signal.SIGINT, 1), (signal.SIGTERM, 1),
                                            (signal.SIGINT, 2)],
                         ids=["SIGINT", "SIGTERM", "Ctrl-C twice"])  # fmt: skip
def test_a_stopped_multi_source_run_leaves_every_file_complete(tmp_path, data_dir,
                                                              detector_bundle, sig, times):
    """A second Ctrl-C while the outputs were being closed raised out of the stop: a
    traceback, and the videos left without their index."""
    clip = data_dir / "vtest_short.avi"
    (tmp_path / "cams.txt").write_text(f"door={clip}\nyard={clip}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_sdk.cli", str(detector_bundle), "--sources",
         str(tmp_path / "cams.txt"), "--realtime", "--save", str(tmp_path / "a.mp4"),
         "--jsonl", str(tmp_path / "r.jsonl"), "-q"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # a guard against a hang, not a timing assertion
        while min(_lines(tmp_path / f"r.{n}.jsonl") for n in ("door", "yard")) < 5:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no results within two minutes"
            time.sleep(0.1)
        proc.send_signal(sig)
        if times == 2:
            time.sleep(0.05)  # the impatient second press, once the first is being handled
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "terminate called" not in err and "Traceback" not in err
    for name in ("door", "yard"):
        video = cv2.VideoCapture(str(tmp_path / f"a.{name}.mp4"))
        assert video.isOpened(), f"a.{name}.mp4 is not playable"
        assert video.read()[0]
        video.release()
        text = (tmp_path / f"r.{name}.jsonl").read_text()
        assert text.endswith("\n")
        records = [json.loads(line) for line in text.splitlines()]
        frames = [r for r in records if "end" not in r]
        assert frames and all(r["source"] == name for r in frames)


def test_a_fleet_device_stops_on_sigterm_like_on_ctrl_c(tmp_path):
    """`edge-run --store` under systemd: SIGTERM killed it outright (no stop, no summary, the
    deploy agent and MQTT outbox not closed)."""
    from tests.fleet.fleet_helpers import frames_folder, make_bundle

    outbox = tmp_path / "outbox.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_sdk.cli", "--store", str(tmp_path / "store"), "--seed",
         str(make_bundle(tmp_path / "b")), "--source", str(frames_folder(tmp_path / "frames")),
         "--loop-fps", "5", "--mqtt", "mqtt://127.0.0.1:1", "--device-id", "cam-01",
         "--outbox", str(outbox)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # a guard against a hang, not a timing assertion
        while not outbox.exists():  # the device runs: its handlers are in place
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the device did not start within two minutes"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err
