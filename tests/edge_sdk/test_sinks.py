"""Sinks: what each writes, and the runner that keeps a slow or broken sink away from inference."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from edge_sdk.annotate import annotate
from edge_sdk.events import LineCrossed, TrackEnded, TrackStarted, ZoneEntered
from edge_sdk.metrics import FrameTimings
from edge_sdk.pipeline import FrameResult, StreamInfo
from edge_sdk.results import Classification, Detections
from edge_sdk.sinks import AnnotatedVideoSink, CallbackSink, JsonlSink, Sink, SinkError, SinkRunner
from edge_sdk.sources import VideoFrame

TIMINGS = FrameTimings(0.1, 1.0, 5.0, 0.2, 0.3, 7.0)
ZONE = ("door", np.array([[10, 10], [60, 10], [60, 60], [10, 60]], np.float64))
LINE = ("gate", np.array([80.0, 0.0]), np.array([80.0, 120.0]))
INFO = StreamInfo("test", 10.0, False, "detect", ("person",), zones=(ZONE,), lines=(LINE,))


def frame_result(i, events=(), image=None):
    dets = Detections(
        xyxy=np.array([[20, 20, 50, 70]], np.float32), scores=np.array([0.9], np.float32),
        class_ids=np.array([0]), tracker_ids=np.array([7]), labels=("person",),
    )  # fmt: skip
    image = np.zeros((120, 160, 3), np.uint8) if image is None else image
    return FrameResult(VideoFrame(image, i, i / 10, 0.0, "cam"), dets, tuple(events), TIMINGS)


def started(i):
    return TrackStarted(frame_index=i, timestamp=i / 10, tracker_id=7, class_id=0,
                        label="person")  # fmt: skip


def run_sink(sink, results, end_events=(), policy="wait"):
    runner = SinkRunner(sink, queue_size=8, policy=policy)
    runner.start(INFO)
    for r in results:
        runner.submit(r)
    runner.finish(end_events)
    assert runner.join(10)
    return runner.stats()


def test_jsonl_writes_one_record_per_frame_and_the_closing_events(tmp_path):
    path = tmp_path / "out.jsonl"
    ended = TrackEnded(frame_index=2, timestamp=0.2, tracker_id=7, class_id=0, first_frame=0,
                       last_frame=2)  # fmt: skip
    stats = run_sink(JsonlSink(path), [frame_result(0, [started(0)]), frame_result(1)], [ended])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert stats.written == 2 and len(lines) == 3
    assert lines[0]["frame"] == 0 and lines[0]["source"] == "cam"
    assert lines[0]["xyxy"] == [[20.0, 20.0, 50.0, 70.0]] and lines[0]["tracker_ids"] == [7]
    assert lines[0]["events"][0]["type"] == "track_started" and lines[1]["events"] == []
    assert lines[2] == {"end": True, "events": [ended.to_dict()]}


def test_jsonl_events_only(tmp_path):
    path = tmp_path / "events.jsonl"
    zone = ZoneEntered(frame_index=1, timestamp=0.1, tracker_id=7, class_id=0, zone="door")
    run_sink(
        JsonlSink(path, events_only=True),
        [frame_result(0, [started(0)]), frame_result(1, [zone]), frame_result(2)],
    )
    types = [json.loads(line)["type"] for line in path.read_text().splitlines()]
    assert types == ["track_started", "zone_entered"]


def test_jsonl_refuses_a_missing_folder(tmp_path):
    with pytest.raises(SinkError, match="does not exist"):
        JsonlSink(tmp_path / "nope" / "out.jsonl")


def test_annotated_video_has_every_frame_with_boxes_drawn(tmp_path):
    path = tmp_path / "out.avi"
    crossing = LineCrossed(frame_index=1, timestamp=0.1, tracker_id=7, class_id=0, line="gate",
                           direction="in", in_count=1, out_count=0)  # fmt: skip
    stats = run_sink(AnnotatedVideoSink(path), [frame_result(0), frame_result(1, [crossing]),
                                                frame_result(2)])  # fmt: skip
    assert stats.written == 3 and stats.errors == 0
    cap = cv2.VideoCapture(str(path))
    frames = []
    while (item := cap.read())[0]:
        frames.append(item[1])
    assert len(frames) == 3 and frames[0].shape == (120, 160, 3)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    edge = frames[0][45, 18:23].astype(int)  # the box's left edge at x=20
    assert edge.max() > 100 and frames[0][100, 120].max() < 30  # drawn box; untouched corner


@pytest.mark.parametrize(
    ("name", "words"), [("out.gif", ["use one of"]), ("missing/out.mp4", ["does not exist"])]
)
def test_annotated_video_refuses_bad_paths(tmp_path, name, words):
    with pytest.raises(SinkError) as info:
        AnnotatedVideoSink(tmp_path / name)
    assert all(w in str(info.value) for w in words)


def test_annotate_draws_zones_lines_and_classifications():
    image = np.zeros((120, 160, 3), np.uint8)
    out = annotate(image, None, zones=[ZONE], lines=[LINE], zone_counts={"door": 1},
                   line_counts={"gate": (2, 1)})  # fmt: skip
    assert out[35, 10].max() > 0 and out[100, 80].max() > 0  # zone edge, line
    assert image.max() == 0  # the input is not modified
    cls = Classification(np.array([3]), np.array([0.9], np.float32), ("cat",))
    assert annotate(image, cls)[:40].max() > 0


def test_drop_policy_never_blocks_and_counts_what_it_drops():
    release = threading.Event()

    class Blocked(Sink):
        name = "blocked"

        def write(self, result):
            release.wait(10)

    runner = SinkRunner(Blocked(), queue_size=4, policy="drop")
    runner.start(INFO)
    started_at = time.perf_counter()
    for i in range(100):
        runner.submit(frame_result(i))
    submit_seconds = time.perf_counter() - started_at
    release.set()
    runner.finish()
    assert runner.join(10)
    stats = runner.stats()
    assert stats.written + stats.dropped == 100 and stats.dropped >= 100 - 4 - 1
    assert submit_seconds < 5  # 100 submits did not wait for a sink stuck for 10 s


def test_wait_policy_delivers_everything():
    got = []
    stats = run_sink(CallbackSink(lambda r: (time.sleep(0.001), got.append(r.frame.index))),
                     [frame_result(i) for i in range(30)], policy="wait")  # fmt: skip
    assert got == list(range(30)) and stats.dropped == 0


def test_edge_sdk_runs_without_paho_and_mqtt_sink_says_what_to_install():
    code = (
        "import sys; sys.modules['paho'] = None; sys.modules['sync'] = None\n"
        "import edge_sdk, edge_sdk.sinks, edge_sdk.pipeline, edge_sdk.cli\n"
        "from edge_sdk.sinks import MqttSink, SinkError\n"
        "try:\n    MqttSink('mqtt://127.0.0.1:1', 'cam')\nexcept SinkError as e:\n    print(e)\n"
        "print(sorted(m for m, mod in sys.modules.items() if mod is not None and "
        "m.split('.')[0] in ('torch', 'onnx', 'optimize', 'paho', 'sync')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert "pip install" in first and second == "[]"


def _mqtt_helpers():
    """sync and its test broker, if that part of the project is present and usable here."""
    pytest.importorskip("paho.mqtt")
    sync = pytest.importorskip("sync")
    try:
        from tests.sync.synctest_broker import MOSQUITTO, Broker, Recorder, wait_for
    except ImportError as exc:
        pytest.skip(f"sync test helpers not importable: {exc}")
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not found")
    return sync, Broker, Recorder, wait_for


def test_mqtt_sink_publishes_results_events_and_telemetry(tmp_path):
    sync, Broker, Recorder, wait_for = _mqtt_helpers()
    from edge_sdk.sinks.mqtt import MqttSink

    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    recorder = None
    try:
        recorder = Recorder(broker.port, ["edge/#"])
        sink = MqttSink(broker.url, "cam-7", tmp_path / "outbox.db")
        ended = TrackEnded(frame_index=2, timestamp=0.2, tracker_id=7, class_id=0,
                           first_frame=0, last_frame=2)  # fmt: skip
        run_sink(sink, [frame_result(0, [started(0)]), frame_result(1)], [ended])

        def topic(stream):
            return [m for m in recorder.messages if m.topic.endswith(f"/cam-7/{stream}")]

        wait_for(lambda: len(topic("detections")) == 2 and len(topic("events")) == 2, 20,
                 "2 results and 2 events on the broker")  # fmt: skip
        envelopes = [sync.decode_envelope(m.payload) for m in topic("events")]
        payloads = [getattr(e, "payload", e) for e in envelopes]
        assert [p["type"] for p in payloads] == ["track_started", "track_ended"]
    finally:
        if recorder is not None:
            recorder.close()
        broker.stop()
