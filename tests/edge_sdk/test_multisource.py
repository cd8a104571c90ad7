"""Several sources, one model: `Pipeline(sources=[...])` and `edge-run --source A --source B`.

Each source plays the two-box scene at its own point in time (source k starts at frame 10k),
so every result can be checked against the truth of the source it claims to come from: a
result handed to the wrong camera has the wrong boxes.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

import edge_sdk
from edge_sdk.errors import EdgeError, SourceError
from edge_sdk.multisource import MultiPipeline, StreamSpec, default_name, read_sources
from edge_sdk.sinks import CallbackSink
from edge_sdk.sources import Source
from tests.conftest import error_lines, run_cli
from tests.edge_sdk.test_pipeline import ZONES, synthetic_frame, truth
from tests.edge_sdk.test_sources import ListReader

OFFSETS = {"a": 0, "b": 10, "c": 20}


def scene(offset, n, **options):
    return Source(ListReader([synthetic_frame(offset + t) for t in range(n)], **options))


def assert_truth(result, offset):
    boxes = result.result.xyxy[np.argsort(result.result.xyxy[:, 1])]
    if result.result.tracker_ids is not None and result.frame.index < 2:
        return  # a track is confirmed on its second frame
    np.testing.assert_allclose(boxes, truth(offset + result.frame.index), atol=2.5)


def test_batches_mix_sources_and_every_result_reaches_its_own_camera(batched):
    shared, own = [], {k: [] for k in OFFSETS}
    specs = [StreamSpec(scene(off, 15), name=k, sinks=(CallbackSink(own[k].append),))
             for k, off in OFFSETS.items()]
    pipeline = edge_sdk.Pipeline(sources=specs, model=batched, tracker="bytetrack",
                                 zones=ZONES, sinks=[CallbackSink(shared.append)],
                                 sink_policy="wait", workers=1)  # one call: full batches
    assert isinstance(pipeline, MultiPipeline)
    results = list(pipeline)
    assert len(results) == 45 and max(r.batch_size for r in results) > 1
    ahead = batched.spare_core(1)  # one worker on one thread: feeders preprocess (2+ cores)
    assert all((r.frame.prepare_ms > 0) == ahead and r.frame.prepared is None for r in results)
    for r in results:
        assert_truth(r, OFFSETS[r.name])
        assert r.to_dict()["source"] == r.name
    for k in OFFSETS:  # each source: every frame in order, its own tracker's ids
        mine = [r for r in results if r.name == k]
        assert [r.frame.index for r in mine] == list(range(15))
        assert sorted(set(mine[-1].result.tracker_ids)) == [1, 2]
        assert [r.frame.index for r in own[k]] == list(range(15))
        assert all(r.name == k for r in own[k])
    assert sorted(r.name for r in shared) == sorted(r.name for r in results)
    events = [e for r in results for e in r.events] + list(pipeline.final_events)
    assert {e.source for e in events} == set(OFFSETS)
    assert all(e.to_dict()["source"] == e.source for e in events)
    per = pipeline.metrics_by_source()
    assert {k: s.frames for k, s in per.items()} == {k: 15 for k in OFFSETS}
    assert pipeline.metrics().frames == 45


class StallingReader(ListReader):
    """A live camera that delivers one frame, then hangs until released."""

    def __init__(self):
        super().__init__([synthetic_frame(0)], live=True)
        self.release = threading.Event()

    def read(self):
        if self.next >= 1:
            self.release.wait()
            return None
        return super().read()


def test_a_stalled_source_does_not_stall_the_others(batched):
    stalled = StallingReader()
    specs = [StreamSpec(Source(stalled, max_reconnects=0), name="stuck"),
             StreamSpec(scene(10, 30), name="b")]  # fmt: skip
    pipeline = edge_sdk.Pipeline(sources=specs, model=batched, max_wait_ms=20)
    seen = []
    try:
        for r in pipeline:
            seen.append(r)
            if sum(x.name == "b" for x in seen) == 30:
                stalled.release.set()  # its capture thread may end: closing need not wait
                break
    finally:
        stalled.release.set()
        pipeline.stop()
    from_b = [r for r in seen if r.name == "b"]
    assert [r.frame.index for r in from_b] == list(range(30))
    for r in from_b:  # all 30 came while "stuck" hung: a batch waits for it only max_wait_ms
        assert_truth(r, 10)


class LateCamera(ListReader):
    """A camera still off when the pipeline starts: its first opens fail."""

    def __init__(self, frames, off_for: int) -> None:
        super().__init__(frames, live=True)
        self.off_for = off_for

    def open(self):
        self.opens += 1
        if self.opens <= self.off_for:
            raise SourceError("late: no such camera")


def test_a_camera_off_at_start_joins_later_and_the_others_run(batched):
    """One camera of several that could not be opened at start stopped them all (exit 2);
    at run time the same camera would just reconnect."""
    late = Source(LateCamera([synthetic_frame(20 + t) for t in range(5)], off_for=2),
                  backoff=(0.01, 0.02))
    pipeline = edge_sdk.Pipeline(sources=[StreamSpec(late, name="late"),
                                          StreamSpec(scene(10, 30), name="b")],
                                 model=batched, max_wait_ms=20)  # fmt: skip
    seen = list(pipeline)
    assert [r.frame.index for r in seen if r.name == "b"] == list(range(30))
    from_late = [r for r in seen if r.name == "late"]  # live: stale frames are dropped
    assert from_late and from_late[-1].frame.index == 4
    for r in from_late:
        assert_truth(r, 20)
    said = [u.message for u in pipeline.status_log if u.stage == "source late"]
    assert any("could not open at start (late: no such camera)" in m for m in said), said
    off = Source(LateCamera([], off_for=99))
    with pytest.raises(SourceError, match="no such camera"):  # every source down: nothing runs
        edge_sdk.Pipeline(sources=[off], model=batched).run()


def test_a_dead_camera_shows_as_down_in_the_status_line_summary_and_telemetry(batched,
                                                                               tmp_path):
    """One camera of several dead: the run goes on (a 24/7 device waits for it), but nothing
    but its reopen lines said so: the status line, the summary and the MQTT telemetry (the
    fleet's view) showed the total FPS of the others as if all were well."""
    from edge_sdk.multirun import summary
    from edge_sdk.sinks import MqttSink
    from sync import MqttSync

    dead = Source(LateCamera([], off_for=10**9), backoff=(0.01, 0.02))
    pipeline = edge_sdk.Pipeline(sources=[StreamSpec(dead, name="dead"),
                                          StreamSpec(scene(10, 30), name="b")],
                                 model=batched, max_wait_ms=20)  # fmt: skip
    client = MqttSync(broker="mqtt://127.0.0.1:1", device_id="cam-01",
                      outbox=tmp_path / "outbox.db")  # fmt: skip
    try:
        seen = []
        for r in pipeline:  # never ends by itself: the dead camera may come back
            seen.append(r)
            if len(seen) == 30:
                break
        total, by_source = pipeline.metrics(), pipeline.metrics_by_source()
        assert total.down == ("dead",) and total.status_line().endswith(" | DOWN dead")
        assert by_source["dead"].source.down_since is not None
        assert by_source["b"].source.down_since is None and by_source["b"].frames == 30
        report = summary(pipeline, [])
        assert [ln for ln in report.splitlines() if ln.startswith("  dead:")][0].endswith(
            "(reopening)") and "DOWN since" in report
        MqttSink(client=client).on_metrics(total)
        assert client.telemetry.runtime_values()["sources_down"] == ["dead"]
    finally:
        pipeline.stop()
        client.close()


def test_the_recent_fps_of_a_camera_that_stopped_is_zero():
    """The recent FPS was the last window's rate however long ago it ended: a dead camera went
    on at 25 fps in the status line and the telemetry, and the fleet's low-FPS alert never
    fired. A slow model's long gaps between results are not a stop."""
    from edge_sdk.metrics import FrameTimings, Metrics

    timings = FrameTimings(1.0, 1.0, 1.0, 1.0, 1.0, 5.0)
    camera, slow = Metrics(), Metrics()
    for i in range(50):
        camera.record(timings, 100.0 + i * 0.04)
    for i in range(5):
        slow.record(timings, 100.0 + i * 5.0)
    assert camera.snapshot(now=102.0).recent_fps == pytest.approx(25.0)
    assert camera.snapshot(now=110.0).recent_fps == 0.0
    assert " | 0.0 fps | " in camera.snapshot(now=110.0).status_line()
    assert slow.snapshot(now=130.0).recent_fps == pytest.approx(0.2)  # 10 s after its last


def test_a_batch_1_bundle_runs_several_sources_frame_by_frame(detector_bundle):
    model = edge_sdk.load(detector_bundle, threads=1)
    pipeline = edge_sdk.Pipeline(sources=[StreamSpec(scene(0, 8), "a"),
                                          StreamSpec(scene(20, 8), "c")], model=model)
    results = list(pipeline)
    assert len(results) == 16 and {r.batch_size for r in results} == {1}
    for r in results:
        assert_truth(r, OFFSETS[r.name])


def test_mistakes_are_refused_clearly(batched):
    with pytest.raises(EdgeError, match="not both"):
        edge_sdk.Pipeline(scene(0, 1), batched, sources=[scene(0, 1)])
    with pytest.raises(EdgeError, match="used twice"):
        MultiPipeline([StreamSpec(scene(0, 1), "x"), StreamSpec(scene(0, 1), "x")], batched)
    with pytest.raises(EdgeError, match="source name"):
        MultiPipeline([StreamSpec(scene(0, 1), "../etc")], batched)
    with pytest.raises(EdgeError, match="one Tracker instance"):
        MultiPipeline([scene(0, 1)], batched, tracker=edge_sdk.tracking.build_tracker("bytetrack"))
    with pytest.raises(EdgeError, match="empty"):
        MultiPipeline([], batched)


def test_default_names():
    assert default_name("0") == "camera0" and default_name("²") == "source"
    assert default_name("/data/street cam.mp4") == "street-cam"
    assert default_name("rtsp://user:pw@10.0.0.5:554/live") == "10.0.0.5-554-live"


def test_sources_file_in_json_and_text(tmp_path):
    (tmp_path / "door.json").write_text(json.dumps(ZONES))
    (tmp_path / "s.json").write_text(json.dumps({"sources": [
        {"name": "door", "source": "door.mp4", "zones": "door.json"}, "rtsp://cam/2", 0]}))
    specs = read_sources(tmp_path / "s.json")
    assert [s.name for s in specs] == ["door", None, None]
    assert specs[0].source == str(tmp_path / "door.mp4")
    assert specs[0].zones == str(tmp_path / "door.json")
    assert specs[1].source == "rtsp://cam/2" and specs[2].source == 0
    (tmp_path / "s.txt").write_text("# cameras\nlobby=rtsp://cam/1?a=b\n\nclip.avi\n")
    specs = read_sources(tmp_path / "s.txt")
    assert [(s.name, s.source) for s in specs] == [("lobby", "rtsp://cam/1?a=b"),
                                                   (None, str(tmp_path / "clip.avi"))]
    for text, words in (("[{\"url\": 1}]", "needs a \"source\""), ("{", "not valid JSON"),
                        ("# nothing\n", "no source"), ('[{"source": true}]', "string"),
                        ('[{"name": "door", "source": " "}]', "entry 0: source is empty")):
        (tmp_path / "bad").write_text(text)
        with pytest.raises(EdgeError, match=words):
            read_sources(tmp_path / "bad")


@pytest.mark.parametrize("text, words", [
    ("=\n", "line 1: the name is empty"),
    ("# a comment\n\ncam/../x=/data/a.avi\n", "line 3: name 'cam/../x' is a path"),
    ("..=a.avi\n", "name '..' is a path (it has '..')"),
    ("my cam=a.avi\n", "name 'my cam' has ' '"),
    ("-cam=a.avi\n", "name '-cam' starts with '-'"),
    (f"{'c' * 65}=a.avi\n", "is 65 characters long"),
    ("door=\n", "line 1: no source after 'door='"),
    ('[{"name": "a/b", "source": "a.avi"}]', "entry 0: name 'a/b' is a path"),
])
def test_a_bad_name_in_a_sources_file_is_said_with_its_line(tmp_path, text, words):
    (tmp_path / "s.txt").write_text(text)
    with pytest.raises(EdgeError) as caught:
        read_sources(tmp_path / "s.txt")
    assert words in str(caught.value) and "s.txt" in str(caught.value)
    assert "letters, digits" in str(caught.value) or "no source" in str(caught.value)


def test_a_sources_file_saved_with_a_bom_reads_as_without(tmp_path):
    """Windows Notepad's UTF-8 starts with a BOM: the first name was refused for it
    ("name '\\ufeffdoor' has '\\ufeff'"), and a JSON file was read as text."""
    (tmp_path / "s.txt").write_bytes("door=rtsp://cam/1\r\nyard=rtsp://cam/2\r\n".encode("utf-8-sig"))
    assert [(s.name, s.source) for s in read_sources(tmp_path / "s.txt")] == [
        ("door", "rtsp://cam/1"), ("yard", "rtsp://cam/2")]
    (tmp_path / "s.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(
        [{"name": "door", "source": "rtsp://cam/1"}]).encode())
    assert [s.name for s in read_sources(tmp_path / "s.json")] == ["door"]


def test_an_equals_sign_of_the_source_itself_is_kept(tmp_path):
    (tmp_path / "a b=c.avi").write_bytes(b"")  # a file whose name has '=' (and a space)
    (tmp_path / "s.txt").write_text("a b=c.avi\nrtsp://cam/x?user=a\ncam.1=rtsp://cam/y\n")
    specs = read_sources(tmp_path / "s.txt")
    assert [(s.name, s.source) for s in specs] == [
        (None, str(tmp_path / "a b=c.avi")), (None, "rtsp://cam/x?user=a"),
        ("cam.1", "rtsp://cam/y")]


def test_edge_run_with_two_sources_writes_one_file_per_source(batched_path, tmp_path):
    clip = tmp_path / "clip"
    clip.mkdir()
    import cv2

    for t in range(6):
        cv2.imwrite(str(clip / f"{t:03d}.png"), synthetic_frame(t))
    (tmp_path / "list.txt").write_text(f"second={clip}\n")
    result = run_cli("edge-run", batched_path, "--source", clip, "--sources",
                     tmp_path / "list.txt", "--jsonl", tmp_path / "out.jsonl",
                     "--max-batch", "2", "--tracker", "none")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "12 frames" in result.stderr and "from 2 sources, max batch 2" in result.stderr
    assert f"results file: {tmp_path / 'out.*.jsonl'}" in result.stderr
    for name in ("clip", "second"):
        rows = [json.loads(x) for x in (tmp_path / f"out.{name}.jsonl").read_text().splitlines()]
        assert [r["frame"] for r in rows] == list(range(6))
        assert {r["source"] for r in rows} == {name}
        assert rows[3]["file"].endswith("003.png") and len(rows[3]["xyxy"]) == 2
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("args, words", [
    (["--max-batch", "9"], "more than this bundle takes"),
    (["--sources", "missing.txt"], "not found"),
    (["--source", " "], "--source is empty"),
    ([], "give a --source"),
])
def test_edge_run_mistakes(batched_path, tmp_path, args, words):
    base = ["--source", str(tmp_path), "--source", str(tmp_path)] if args[:1] == [
        "--max-batch"] else []
    result = run_cli("edge-run", batched_path, *base, *args, cwd=tmp_path)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(error_lines(result.stderr)) <= 2
