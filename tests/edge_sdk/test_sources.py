"""Sources: every frame of a file in order, newest-only for live sources, reopen on failure."""

from __future__ import annotations

import socket
import threading
import time

import cv2
import numpy as np
import pytest

from edge_sdk.errors import SourceError
from edge_sdk.sources import (
    ImageFolderReader,
    OpenCvReader,
    Source,
    VideoFrame,
    open_source,
    reader_for,
)


class ListReader:
    """An in-memory reader: frame i is a uniform image of grey level i (so frames identify
    themselves). `fail_at` makes the read of those frame numbers raise once each, as a camera
    driver or decoder would; `open_failures` makes that many reopen attempts fail first."""

    def __init__(self, frames, live=False, fail_at=(), open_failures=0, fps=None, delay=0.0):
        self.frames = frames
        self.live = live
        self.fps = fps
        self.name = self.current = "list"
        self.fail_at = set(fail_at)
        self.open_failures = open_failures
        self.delay = delay
        self.opens = 0
        self.next = 0

    def open(self):
        self.opens += 1
        if self.opens > 1 and self.open_failures > 0:
            self.open_failures -= 1
            raise SourceError("device unplugged")

    def read(self):
        if self.delay:
            time.sleep(self.delay)
        if self.next in self.fail_at:
            self.fail_at.discard(self.next)
            raise RuntimeError(f"read of frame {self.next} failed")
        if self.next >= len(self.frames):
            return None
        frame = self.frames[self.next]
        self.next += 1
        return frame, self.next / 10

    def close(self):
        pass


def grey_frames(n, h=24, w=32):
    return [np.full((h, w, 3), i, np.uint8) for i in range(n)]


def drain(source, timeout=10.0):
    frames = []
    while (frame := source.read(timeout=timeout)) is not None:
        frames.append(frame)
    return frames


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.fixture
def video(tmp_path):
    """A real 20-frame MJPG file; frame i has grey level 10 * i."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 48))
    for i in range(20):
        writer.write(np.full((48, 64, 3), 10 * i, np.uint8))
    writer.release()
    return path


@pytest.mark.parametrize("pace", [True, False])
def test_file_source_hands_over_every_frame_in_order(video, pace):
    with open_source(video, pace=pace) as source:
        frames = drain(source)
    assert [f.index for f in frames] == list(range(20))
    levels = [int(round(f.image.mean())) for f in frames]
    assert all(abs(level - 10 * i) <= 2 for i, level in enumerate(levels)), levels
    assert [f.timestamp for f in frames] == pytest.approx([i / 5 for i in range(20)], abs=1e-3)
    stats = source.stats()
    assert stats.frames_read == 20 and stats.frames_dropped == 0 and stats.ended
    assert not stats.live and source.fps == pytest.approx(5.0)


def test_paced_file_source_reads_only_when_asked():
    reader = ListReader(grey_frames(10))
    source = Source(reader, pace=True).start()
    time.sleep(0.05)
    assert source.stats().frames_read == 0  # nothing read ahead
    first = source.read(timeout=5)
    assert first.index == 0
    source.prefetch()
    wait_until(lambda: source.stats().frames_read == 2)
    time.sleep(0.05)
    assert source.stats().frames_read == 2  # one prefetch, one frame
    assert source.read(timeout=5).index == 1
    source.stop()


def test_folder_source_reads_sorted_images_and_skips_unreadable(tmp_path):
    for i in (2, 0, 1):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), np.full((8, 8, 3), 50 * i, np.uint8))
    (tmp_path / "img1b.jpg").write_bytes(b"not a jpeg")
    reader = reader_for(tmp_path)
    assert isinstance(reader, ImageFolderReader)
    with Source(reader) as source:
        frames = drain(source)
    assert [f.source.rsplit("/", 1)[-1] for f in frames] == ["img0.png", "img1.png", "img2.png"]
    assert [int(f.image.mean()) for f in frames] == [0, 50, 100]
    assert reader.skipped and reader.skipped[0].endswith("img1b.jpg")


def test_a_single_image_is_a_one_frame_source(tmp_path):
    path = tmp_path / "one.jpg"
    cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    with open_source(str(path)) as source:
        assert len(drain(source)) == 1


@pytest.mark.parametrize(
    ("spec", "kind", "live"),
    [(0, OpenCvReader, True), ("1", OpenCvReader, True),
     ("rtsp://127.0.0.1:8554/cam", OpenCvReader, True),
     ("http://127.0.0.1:8080/video.mjpg", OpenCvReader, True)],
)  # fmt: skip
def test_spec_picks_the_reader(spec, kind, live):
    reader = reader_for(spec)
    assert isinstance(reader, kind) and reader.live is live


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda d: d / "missing.mp4", ["not found", "camera index"]),
        (lambda d: d, ["has no images"]),
        (
            lambda d: (d / "broken.avi").write_bytes(b"\0garbage" * 100) and d / "broken.avi",
            ["cannot open", "broken.avi", "not a video OpenCV can decode"],
        ),
        (  # a text file listed by mistake was said to be "not a camera"
            lambda d: (d / "notes.txt").write_text("door=cam\n") and d / "notes.txt",
            ["cannot open", "notes.txt: not a video OpenCV can decode"],
        ),
    ],
    ids=["missing file", "empty folder", "not a video", "a text file"],
)
def test_unopenable_sources_fail_at_start_with_a_clear_error(tmp_path, make, words):
    with pytest.raises(SourceError) as info:
        open_source(make(tmp_path)).start()
    for word in words:
        assert word in str(info.value)


def test_a_source_that_raises_mid_stream_is_reopened_and_loses_no_frame():
    updates = []
    reader = ListReader(grey_frames(12), fail_at={5, 9})
    source = Source(reader, backoff=(0.01, 0.01), on_status=updates.append).start()
    frames = drain(source)
    assert [f.index for f in frames] == list(range(12))
    assert [int(f.image[0, 0, 0]) for f in frames] == list(range(12))
    stats = source.stats()
    assert stats.reconnects == 2 and stats.read_errors == 2 and stats.error is None
    kinds = [u.kind for u in updates]
    assert kinds == ["reconnecting", "reconnected", "reconnecting", "reconnected", "ended"]
    assert "read of frame 5 failed" in updates[0].message


def test_reopen_backs_off_until_the_device_is_back():
    updates = []
    reader = ListReader(grey_frames(4), live=True, fail_at={2}, open_failures=3)
    source = Source(reader, backoff=(0.01, 0.02), on_status=updates.append).start()
    frames = drain(source)
    assert [int(f.image[0, 0, 0]) for f in frames][-1] == 3
    assert reader.opens == 1 + 4  # the first open, three failed reopens, one that worked
    assert [u.kind for u in updates].count("reconnecting") == 4
    assert source.stats().reconnects == 1


def test_a_dead_camera_is_said_to_be_down_without_flooding_the_log():
    """Every reopen attempt was a line of its own: a camera dead all weekend wrote one every
    10 s. Now attempts 1-9 are said, then the 10th, 20th, ... 100th, 200th; the stats say
    the source is down until it reopens."""
    updates, down = [], []
    reader = ListReader(grey_frames(3), live=True, fail_at={1}, open_failures=250)
    source = Source(reader, backoff=(0.0005, 0.0005))

    def heard(update):
        updates.append(update)
        down.append(source.stats().down_since)

    source.on_status = heard
    source.start()
    drain(source)
    said = [u for u in updates if u.kind == "reconnecting"]
    assert reader.opens == 1 + 251 and source.stats().reconnects == 1
    assert len(said) == 9 + 9 + 2  # 1-9, 10-90, 100 and 200 of the 250 failed attempts
    assert "still down since" in said[9].message and "9 attempts so far" in said[9].message
    assert "said again at attempt 20" in said[9].message
    assert "said again at attempt 300" in said[-1].message
    assert all(d is not None for d, u in zip(down, updates) if u.kind == "reconnecting")
    assert source.stats().down_since is None  # reopened


def test_source_gives_up_after_max_reconnects_and_says_why():
    updates = []
    reader = ListReader(grey_frames(4), fail_at={1}, open_failures=99)
    source = Source(reader, max_reconnects=2, backoff=(0.01, 0.01),
                    on_status=updates.append).start()  # fmt: skip
    frames = drain(source)
    assert len(frames) == 1
    stats = source.stats()
    assert stats.ended and "gave up after 2 reconnect attempts" in stats.error
    assert "device unplugged" in stats.error
    assert updates[-1].kind == "failed"


def test_live_source_keeps_only_the_newest_frames_and_counts_drops():
    reader = ListReader(grey_frames(50), live=True)
    source = Source(reader, buffer_size=2).start()
    wait_until(lambda: source.stats().ended)  # the consumer was too slow for all 50
    frames = drain(source)
    assert [f.index for f in frames] == [48, 49]
    assert source.stats().frames_dropped == 48


def test_realtime_file_behaves_like_a_camera():
    source = Source(ListReader(grey_frames(3), fps=1000.0), realtime=True)
    assert source.live and not source.paced
    with source:
        frames = drain(source)
    assert frames and frames[-1].index == 2


def test_a_file_source_prepares_every_frame_in_its_capture_thread():
    source = Source(ListReader(grey_frames(6)))
    source.prepare = lambda image: (threading.current_thread().name, int(image[0, 0, 0]))
    with source:
        frames = drain(source)
    assert [f.prepared for f in frames] == [("edge-capture", i) for i in range(6)]
    assert all(f.prepare_ms >= 0 for f in frames)


def test_a_live_source_prepares_only_frames_the_consumer_is_ready_for():
    calls = []
    source = Source(ListReader(grey_frames(50), live=True))
    source.prepare = lambda image: calls.append(int(image[0, 0, 0])) or "ready"
    source.start()
    wait_until(lambda: source.stats().ended)  # nobody reading: 49 frames replaced unseen
    assert calls == [0]  # only the first found the buffer empty
    assert [f.prepared for f in drain(source)] == [None]  # left to the consumer

    source = Source(ListReader(grey_frames(20), live=True, delay=0.05))
    source.prepare = lambda image: "ready"
    with source:  # a consumer waiting for every frame
        frames = drain(source)
    assert sum(f.prepared == "ready" for f in frames) >= len(frames) // 2


def test_a_prepare_that_raises_leaves_the_frame_to_the_consumer():
    def fail(image):
        raise ValueError("not an image this model takes")

    source = Source(ListReader(grey_frames(4)))
    source.prepare = fail
    with source:
        frames = drain(source)
    assert [(f.index, f.prepared) for f in frames] == [(i, None) for i in range(4)]


def test_video_frame_is_frozen():
    frame = VideoFrame(np.zeros((2, 2, 3), np.uint8), 0, 0.0, 0.0, "x")
    with pytest.raises(AttributeError):
        frame.index = 1


def test_a_camera_index_no_camera_can_have_is_a_source_error():
    """'²' passed str.isdigit and int() raised ValueError; a 23-digit index reached OpenCV and
    overflowed its C long: both were tracebacks."""
    from edge_sdk.sources.readers import reader_for

    assert reader_for("2").target == 2 and reader_for(" 0 ").target == 0
    for spec in ("99999999999999999999999", 99999999999999999999999, -1, 10000):
        with pytest.raises(SourceError, match="out of range: cameras are numbered 0 to 9999"):
            reader_for(spec)
    with pytest.raises(SourceError, match="not found"):
        reader_for("²")


def test_a_device_file_is_opened_as_a_camera():
    """`--source /dev/video0` said "not found" (a device file is not a regular file)."""
    from edge_sdk.sources.readers import reader_for

    reader = reader_for("/dev/null")  # a character device like /dev/video0, but no camera
    assert reader.live
    with pytest.raises(SourceError, match="/dev/null: not a camera OpenCV can open"):
        reader.open()


def _closed_port() -> int:
    """A loopback port nothing listens on: bound once for a free number, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_a_stream_whose_port_refuses_is_said_to_refuse_not_to_be_silent(scheme):
    # an instant refusal was reported as "nothing answered there within 5 s"
    url = f"{scheme}://127.0.0.1:{_closed_port()}/cam"
    with pytest.raises(SourceError) as info:
        reader_for(url).open()
    text = str(info.value)
    assert "refused the connection" in text and "within" not in text


def test_a_stream_server_that_accepts_but_serves_nothing_is_told_apart():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def serve():  # accept and hang up, as a server that is not RTSP would
            for _ in range(4):
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                conn.close()

        threading.Thread(target=serve, daemon=True).start()
        with pytest.raises(SourceError) as info:
            reader_for(f"rtsp://127.0.0.1:{port}/cam").open()
    assert "accepted the connection but no stream opened" in str(info.value)
