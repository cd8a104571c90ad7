"""Event snapshots and clips from a real pipeline run (the tiny detector on the two-box scene,
whose zone and line events are known), and the store's size cap."""

from __future__ import annotations

import json
import os
import pathlib

import cv2
import pytest

import edge_sdk
from edge_sdk.clips import INDEX, ClipStore, EventClipSink
from edge_sdk.sinks.base import SinkError
from tests.edge_sdk.test_pipeline import ZONES, synthetic_source


def run(detector, sink):
    edge_sdk.Pipeline(synthetic_source(), detector, tracker="bytetrack", zones=ZONES,
                      sinks=[sink], sink_policy="wait").run()  # fmt: skip


@pytest.fixture(scope="module")
def detector(detector_bundle):
    return edge_sdk.load(detector_bundle, threads=1)


def test_snapshots_and_clips_are_written_for_the_chosen_events(detector, tmp_path):
    sink = EventClipSink(tmp_path / "clips", kinds={"line_crossed"}, clip_seconds=0.5, fps=10)
    run(detector, sink)
    metas = [json.loads(p.read_text()) for p in sorted((tmp_path / "clips").glob("*.json"))]
    assert sink.snapshots == 2 and len(metas) == 2  # the two boxes cross the middle line
    for meta in metas:
        assert meta["event"]["type"] == "line_crossed"
        image = cv2.imread(str(tmp_path / "clips" / meta["snapshot"]))
        x1, y1, x2, y2 = (int(v) for v in meta["box"])
        assert image[y1, (x1 + x2) // 2, 2] > 200 and image[y1, (x1 + x2) // 2, 0] < 80  # red
        clip = cv2.VideoCapture(str(tmp_path / "clips" / meta["clip"]))
        assert int(clip.get(cv2.CAP_PROP_FRAME_COUNT)) == 6 + 5  # 0.5 s before + event, after
    assert sink.clips == 2


def test_a_photo_folder_keeps_one_short_buffer(detector, tmp_path, data_dir):
    """A folder source names each frame by its file; the clip buffer went by that name, so
    every photo read stayed in memory (168 photos, 77 MB; a camera's upload folder, GBs)."""
    sink = EventClipSink(tmp_path / "clips", clip_seconds=0.5, fps=10)
    edge_sdk.Pipeline(data_dir / "eval", detector, tracker="bytetrack", sinks=[sink],
                      sink_policy="wait").run()  # fmt: skip
    held = [len(b) for b in sink._buffers.values()]
    assert held == [6]  # one stream: 0.5 s at 10 fps, and the frame itself


def test_the_store_keeps_under_its_cap_by_deleting_the_oldest(detector, tmp_path):
    sink = EventClipSink(tmp_path / "c", max_bytes=15_000,
                         kinds={"zone_entered", "zone_left", "line_crossed", "track_started"})
    run(detector, sink)
    store = sink.store
    assert sink.snapshots >= 6 and store.deleted > 0
    assert store.size() <= 15_000
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names[-1].split("-", 3)[2] == f"{sink.snapshots:06d}"  # the newest is kept


def test_store_order_and_bad_settings(tmp_path):
    store = ClipStore(tmp_path / "s", max_bytes=250)
    for i in range(5):
        p = store.path(f"n{i}", ".bin")
        p.write_bytes(b"x" * 100)
        os.utime(p, ns=(i * 10**9, i * 10**9))
        store.enforce()
    kept = [p.name.split("-")[-1] for p in (tmp_path / "s").iterdir() if p.name != INDEX]
    assert sorted(kept) == ["n3.bin", "n4.bin"]
    with pytest.raises(SinkError, match="positive"):
        ClipStore(tmp_path / "t", max_bytes=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SinkError, match="cannot use"):
        ClipStore(tmp_path / "file" / "sub", max_bytes=10)


def test_store_never_touches_files_it_did_not_write(tmp_path):
    """A clips folder shared with the user's files: theirs are neither counted nor deleted,
    however old or large (a 250 MB family video once went first under the 200 MB cap)."""
    folder = tmp_path / "shared"
    folder.mkdir()
    theirs = [folder / "family.mp4", folder / "20190101-notes.txt"]
    for p in theirs:
        p.write_bytes(b"y" * 1000)
        os.utime(p, ns=(0, 0))  # older than anything the store writes
    (folder / "album").mkdir()
    (folder / "20200101-000000-000001-link.jpg").symlink_to(theirs[0])  # looks like ours
    store = ClipStore(folder, max_bytes=250)
    for i in range(4):
        store.path(f"n{i}", ".jpg").write_bytes(b"x" * 100)
        store.enforce()
    assert all(p.read_bytes() == b"y" * 1000 for p in theirs)
    assert (folder / "album").is_dir() and (folder / "20200101-000000-000001-link.jpg").exists()
    assert store.size() == 200 and store.deleted == 2


def test_an_index_that_is_a_link_is_refused_and_its_target_left_alone(tmp_path):
    """The store appends to and truncates its .edge-clips index: a link of that name would
    make it write into (or empty) whatever file it points at."""
    folder = tmp_path / "shared"
    folder.mkdir()
    theirs = tmp_path / "notes.txt"
    theirs.write_text("mine\n")
    (folder / INDEX).symlink_to(theirs)
    with pytest.raises(SinkError, match="remove it"):
        ClipStore(folder, max_bytes=250)
    assert theirs.read_text() == "mine\n"


def test_a_users_file_named_like_the_stores_is_never_deleted(tmp_path):
    """Ownership went by the name pattern: a user's file named like a snapshot (here an old
    one, copied back from a backup) was the first to go when the store made room. A later
    store (a restarted or killed run) still cleans up what the earlier one wrote."""
    folder = tmp_path / "shared"
    folder.mkdir()
    theirs = folder / "20200101-000000-000001-door-zone_entered-1.jpg"
    theirs.write_bytes(b"y" * 1000)
    os.utime(theirs, ns=(0, 0))
    first = ClipStore(folder, max_bytes=250)
    for i in range(2):
        first.write(first.path(f"a{i}", ".jpg"), b"x" * 100)
    later = ClipStore(folder, max_bytes=250)  # the first run was killed: no clean-up of its own
    for i in range(2):
        later.write(later.path(f"b{i}", ".jpg"), b"x" * 100)
        later.enforce()
    assert theirs.read_bytes() == b"y" * 1000
    left = sorted(p.name.split("-")[-1] for p in folder.iterdir() if p.name != INDEX)
    assert left == ["1.jpg", "b0.jpg", "b1.jpg"]  # the first run's went first, theirs stays
    assert later.deleted == 2 and later.size() == 200


def test_a_killed_runs_half_written_clip_is_cleaned_up(tmp_path):
    """A clip is written under a hidden .NAME.part.avi until OpenCV reads it back whole; a run
    killed meanwhile leaves it behind. It is the store's (NAME is indexed): counted and, being
    the oldest, deleted first; a hidden file of the user's named like one stays."""
    folder = tmp_path / "c"
    killed = ClipStore(folder, max_bytes=250)
    name = killed.path("door-zone_entered-1", ".jpg").with_suffix("").name
    part = folder / f".{name}.part.avi"
    part.write_bytes(b"x" * 100)
    theirs = folder / ".20200101-000000-000001-door-zone_entered-1.part.avi"
    theirs.write_bytes(b"y" * 100)
    for p in (part, theirs):
        os.utime(p, ns=(0, 0))
    later = ClipStore(folder, max_bytes=250)
    assert later.size() == 100
    for i in range(2):
        later.write(later.path(f"b{i}", ".jpg"), b"x" * 100)
        later.enforce()
    assert not part.exists() and theirs.read_bytes() == b"y" * 100
    assert later.deleted == 1 and later.size() == 200


def test_two_stores_on_one_folder_in_the_same_second_keep_both_snapshots(tmp_path):
    """Two edge-run processes with one --clips folder: each numbered its files from 1, so in
    the same second they wrote the same names and overwrote each other's snapshots."""
    a, b = ClipStore(tmp_path / "c", max_bytes=1 << 20), ClipStore(tmp_path / "c", 1 << 20)
    written = {}
    for i in range(20):
        for who, store in (("a", a), ("b", b)):
            path = store.path("door-zone_entered-1", ".jpg")
            store.write(path, f"{who}{i}".encode())
            store.write(path.with_suffix(".json"), f"{who}{i}".encode())
            written[path.name] = f"{who}{i}".encode()
    assert len(written) == 40  # every snapshot got a name of its own
    for name, data in written.items():
        assert (tmp_path / "c" / name).read_bytes() == data
        assert (tmp_path / "c" / name).with_suffix(".json").read_bytes() == data
    assert a.size() == b.size() == sum(len(d) for d in written.values()) * 2


def test_the_index_of_the_stores_files_stays_short(tmp_path):
    """Every saved event adds its name; names of deleted files are dropped once they pile up."""
    store = ClipStore(tmp_path / "c", max_bytes=1000)
    for i in range(1500):
        store.write(store.path(f"n{i}", ".jpg"), b"x" * 100)
        store.enforce()
    names = (tmp_path / "c" / INDEX).read_text().splitlines()
    assert len(names) <= 2 * 10 + 256 + 1
    assert any(n.endswith("-n1499") for n in names) and store.size() == 1000


def test_snapshots_ship_through_sync_at_low_priority(detector, tmp_path):
    """A real MqttSync (not started: nothing is sent) and its on-disk outbox."""
    import sqlite3

    from sync import MqttSync, Priority

    client = MqttSync(broker="mqtt://127.0.0.1:1", device_id="cam-01",
                      outbox=tmp_path / "outbox.db")  # fmt: skip
    try:
        run(detector, EventClipSink(tmp_path / "c", kinds={"line_crossed"}, client=client))
    finally:
        client.close()
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        rows = db.execute("SELECT stream, priority, body FROM messages").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("snapshots", int(Priority.LOW))] * 2
    assert b"jpeg_base64" in rows[0][2] and b"line_crossed" in rows[0][2]


def test_edge_run_writes_snapshots_and_posts_events(detector_bundle, tmp_path):
    from tests.conftest import run_cli
    from tests.edge_sdk.test_webhook import Endpoint

    video = _boxes_clip(tmp_path)
    (tmp_path / "zones.json").write_text(json.dumps(ZONES))
    endpoint = Endpoint()
    try:
        result = run_cli("edge-run", detector_bundle, "--source", video, "--zones",
                         tmp_path / "zones.json", "--clips", tmp_path / "snaps", "--webhook",
                         endpoint.url, "--device-id", "cam-07")  # fmt: skip
    finally:
        endpoint.close()
    assert result.returncode == 0, result.stderr
    kinds = [b["type"] for b in endpoint.bodies]
    assert kinds.count("line_crossed") == 2 and kinds.count("track_started") == 2
    assert {b["device"] for b in endpoint.bodies} == {"cam-07"}
    metas = [json.loads(p.read_text()) for p in (tmp_path / "snaps").glob("*.json")]
    assert sorted(m["event"]["type"] for m in metas).count("line_crossed") == 2
    assert "snapshots:" in result.stderr and "webhook:" in result.stderr


FULL_DISK_RUNS = """
import json, sys
from pathlib import Path
import cv2
import edge_sdk
from edge_sdk.clips import EventClipSink
from tests.edge_sdk.test_pipeline import ZONES, synthetic_source

folder = Path(sys.argv[-1])
clip_seconds = float(sys.argv[2]) if len(sys.argv) > 3 else 0.0
(folder / "notes.txt").write_text("mine")
detector = edge_sdk.load(sys.argv[1], threads=1)
kinds = {"zone_entered", "zone_left", "line_crossed", "track_started"}
runs = []
for _ in range(3):  # a restart finds the last run's files in the store
    # the 200 MB cap: far above the disk's size
    sink = EventClipSink(folder, kinds=kinds, clip_seconds=clip_seconds, fps=10)
    m = edge_sdk.Pipeline(synthetic_source(), detector, tracker="bytetrack", zones=ZONES,
                          sinks=[sink], sink_policy="wait").run()
    runs.append({"snapshots": sink.snapshots, "clips": sink.clips,
                 "errors": m.sinks[0].errors, "last": f"-{sink.snapshots:06d}-"})
files = sorted(p.name for p in folder.iterdir())
broken = [n for n in files if n.endswith(".jpg") and cv2.imread(str(folder / n)) is None]
clips = {}  # each clip the metadata names: frames in its header, frames that decode
for n in files:
    if n.endswith(".json") and n != ".edge-clips":
        clip = json.loads((folder / n).read_text()).get("clip")
        if clip is not None:
            video = cv2.VideoCapture(str(folder / clip))
            header = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
            decoded = 0
            while video.read()[0]:
                decoded += 1
            clips[clip] = [header, decoded]
print(json.dumps({"runs": runs, "files": files, "broken": broken, "clips": clips,
                  "notes": (folder / "notes.txt").read_text()}))
"""


def _in_tmpfs(folder, options: str, *argv: str):
    """Run `python argv... folder` with a real tmpfs (mount `options`) on `folder`, mounted in
    a user and mount namespace of its own (no root needed); skip where that is not allowed."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import ROOT

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a small tmpfs")
    folder.mkdir()
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         'mount -t tmpfs -o "$2" tmpfs "$1" || exit 99; shift 2; exec "$@"', "sh", str(folder),
         options, sys.executable, *argv, str(folder)],
        cwd=ROOT, capture_output=True, text=True, errors="replace", timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    if proc.returncode == 99 or "unshare:" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[-200:]}")
    return proc


def test_a_full_disk_makes_room_from_the_oldest_snapshots(detector_bundle, tmp_path):
    """A store on a disk smaller than its cap (a real 64 KB tmpfs): once full, every new
    snapshot failed (old ones kept, a cut-off JPEG left behind)."""
    script = tmp_path / "runs.py"
    script.write_text(FULL_DISK_RUNS)
    proc = _in_tmpfs(tmp_path / "small", "size=64k", str(script), str(detector_bundle))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["notes"] == "mine"  # the user's own file stays
    assert out["broken"] == []  # no cut-off JPEG
    for run_ in out["runs"]:
        assert run_["snapshots"] >= 6 and run_["errors"] == 0
    assert any(out["runs"][-1]["last"] in n for n in out["files"])  # the newest was written


def test_a_full_disk_makes_room_for_clips_and_leaves_no_cut_off_clip(detector_bundle, tmp_path):
    """Clips on a disk smaller than the cap (a real 256 KB tmpfs): OpenCV's writer ignored the
    full disk and left cut-off .avi files that the metadata named as the event's clip."""
    script = tmp_path / "runs.py"
    script.write_text(FULL_DISK_RUNS)
    proc = _in_tmpfs(tmp_path / "small", "size=256k", str(script), str(detector_bundle), "0.4")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["notes"] == "mine"  # the user's own file stays
    assert out["broken"] == []
    for run_ in out["runs"]:
        assert run_["snapshots"] >= 6 and run_["clips"] == run_["snapshots"]
        assert run_["errors"] == 0
    assert out["clips"], out["files"]  # clips survive, each one whole
    for name, (header, decoded) in out["clips"].items():
        assert name in out["files"] and header == decoded >= 5, (name, header, decoded)
    newest = [n for n in out["files"] if out["runs"][-1]["last"] in n]
    assert any(n.endswith(".avi") for n in newest), out["files"]  # the newest clip was written


def test_a_clip_larger_than_the_disk_keeps_the_snapshots(detector_bundle, tmp_path):
    """A disk too small for any clip (64 KB; 1 s either side is more): each clip deleted every
    older snapshot to make room and then failed anyway. Now the clip alone is lost (said as
    the sink's error), the metadata names no clip, and no piece of one is left."""
    script = tmp_path / "runs.py"
    script.write_text(FULL_DISK_RUNS)
    proc = _in_tmpfs(tmp_path / "small", "size=64k", str(script), str(detector_bundle), "1.0")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["notes"] == "mine" and out["broken"] == [] and out["clips"] == {}
    assert not [n for n in out["files"] if n.endswith(".avi")]
    for run_ in out["runs"]:
        assert run_["snapshots"] >= 6 and run_["clips"] == 0 and run_["errors"] >= 1
    snapshots = [n for n in out["files"] if n.endswith(".jpg")]
    assert len(snapshots) >= 3  # the last run's older snapshots were not given up for a clip


def test_a_clips_folder_that_cannot_be_written_is_said_at_the_start(tmp_path):
    """A folder on a read-only file system: the run went on and every event's snapshot
    failed; it is now one line before the run, exit 2."""
    proc = _in_tmpfs(tmp_path / "ro", "ro", "-c", "import sys\n"
                     "from edge_sdk.clips import EventClipSink\n"
                     "from edge_sdk.sinks.base import SinkError\n"
                     "try:\n    EventClipSink(sys.argv[1])\n"
                     "except SinkError as exc:\n    sys.exit(f'refused: {exc}')\n")
    assert proc.returncode == 1 and "refused:" in proc.stderr, proc.stderr
    assert "not writable" in proc.stderr


def test_a_snapshot_is_named_by_the_source_and_the_event(detector, tmp_path):
    """A single source's frames carry the file's full path: the name was the path, cut at 80
    characters, losing the event kind and the track id."""
    deep = tmp_path / ("recordings-" * 8) / "2026" / "front door ü"
    deep.mkdir(parents=True)
    video = _boxes_clip(deep)
    sink = EventClipSink(tmp_path / "c", kinds={"line_crossed"})
    edge_sdk.Pipeline(str(video), detector, tracker="bytetrack", zones=ZONES, sinks=[sink],
                      sink_policy="wait").run()  # fmt: skip
    names = sorted(p.name for p in (tmp_path / "c").glob("*.jpg"))
    assert len(names) == 2
    for name in names:
        meta = json.loads((tmp_path / "c" / name).with_suffix(".json").read_text())
        assert name.endswith(f"-boxes-line_crossed-{meta['event']['tracker_id']}.jpg"), name
        assert meta["source"] == str(video)  # the metadata keeps the full path


def test_edge_run_clips_max_mb_caps_the_store(detector_bundle, tmp_path):
    """The store's cap was fixed at 200 MB from edge-run; --clips-max-mb sets it."""
    from tests.conftest import run_cli

    video = _boxes_clip(tmp_path)
    (tmp_path / "zones.json").write_text(json.dumps(ZONES))
    cap = 0.015  # MB: room for a few of the run's snapshots, not all of them
    result = run_cli("edge-run", detector_bundle, "--source", video, "--zones",
                     tmp_path / "zones.json", "--clips", tmp_path / "snaps", "--clips-max-mb",
                     str(cap), "-q")  # fmt: skip
    assert result.returncode == 0, result.stderr
    kept = [p for p in (tmp_path / "snaps").iterdir() if p.name != INDEX]
    assert kept and sum(p.stat().st_size for p in kept) <= cap * (1 << 20)
    assert 1 <= len([p for p in kept if p.suffix == ".jpg"]) < 4  # of the run's 4 (~31 KB)
    events = {json.loads(p.read_text())["event"]["type"] for p in kept if p.suffix == ".json"}
    assert "line_crossed" in events  # the newest survive: the crossings come last


@pytest.mark.parametrize(("value", "words"), [
    ("0", "must be a positive number of MB, got 0"),
    ("-5", "must be a positive number of MB, got -5"),
    ("nan", "must be a positive number of MB, got nan"),
    ("inf", "inf MB is more than any disk holds"),
    ("lots", "'lots' is not a number of MB"),
])  # fmt: skip
def test_edge_run_clips_max_mb_refuses_what_is_not_a_size(tmp_path, value, words):
    from tests.conftest import run_cli

    result = run_cli("edge-run", tmp_path, "--source", tmp_path, "--clips", tmp_path / "c",
                     "--clips-max-mb", value)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and f"--clips-max-mb: {words}" in lines[1], result.stderr
    assert not (tmp_path / "c").exists()


def test_edge_run_clips_max_mb_without_clips_is_one_line(tmp_path):
    from tests.conftest import run_cli

    result = run_cli("edge-run", tmp_path, "--source", tmp_path, "--clips-max-mb", "50")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == ("edge-run: error: --clips-max-mb sizes the --clips folder: add --clips "
                    "DIR, or drop --clips-max-mb")


def _boxes_clip(folder: pathlib.Path) -> pathlib.Path:
    """The synthetic boxes crossing the line, as folder/boxes.avi."""
    from tests.edge_sdk.test_pipeline import FRAMES, synthetic_frame

    video = folder / "boxes.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (640, 480))
    for t in range(FRAMES):
        writer.write(synthetic_frame(t))
    writer.release()
    return video
