"""Event snapshots and clips: what a camera saw when something happened.

`EventClipSink` keeps a ring buffer of each source's recent frames. On an event of a chosen
kind (zone entered, line crossed, track started, ...) it saves a JPEG snapshot of the frame
with the object's box drawn, its metadata as JSON, and optionally a short clip (the buffered
seconds before and as many after, MJPG .avi). Everything goes to a `ClipStore`: a folder with
a size cap, oldest files deleted first; the store deletes only files it wrote (their names are
listed in the folder's `.edge-clips` index), so it can share a folder with the user's files.
With an MQTT client (`sync.MqttSync`) the snapshot is also published on the `snapshots` stream
at low priority, below telemetry and events, so the outbox's priority and size limits decide
what goes when space runs short.

    EventClipSink("clips/", max_bytes=500 << 20, kinds={"zone_entered"}, clip_seconds=3)
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import re
import stat
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge_sdk.multisource import default_name
from edge_sdk.sinks.base import Sink, SinkError

if TYPE_CHECKING:
    from edge_sdk.events import Event
    from edge_sdk.pipeline import FrameResult, StreamInfo

DEFAULT_KINDS = frozenset({"zone_entered", "line_crossed"})
JPEG_QUALITY = 85


DEFAULT_MAX_BYTES = 200 << 20  # the store's cap unless told (edge-run --clips-max-mb)

# The names ClipStore.path gave, one a line: only files under these count toward the cap and
# are ever deleted, by this run or a later one (a killed run's files included).
INDEX = ".edge-clips"
COMPACT_SLACK = 256  # stale names (files already deleted) the index may hold beyond its live ones
FULL = (errno.ENOSPC, errno.EDQUOT)
# A clip being written is `.NAME.part.avi`: hidden, and not the event's clip until it is known
# whole (OpenCV's writer ignores a full disk). It is the store's file under NAME all the same,
# so a killed run's leftover counts toward the cap and is deleted like any other.
PART = ".part"
# A clip's size is not known before OpenCV writes it: its frames as JPEGs (at the snapshots'
# quality) plus this share, and the container's bytes, stand in for it.
CLIP_MARGIN = 1.25
CLIP_OVERHEAD = 4096


class ClipStore:
    """A folder holding at most `max_bytes` of snapshots and clips; the oldest go first.

    Only files the store created are counted and deleted: their names are in the folder's
    index (a name pattern alone once let the store delete a user's file that matched it), so
    a folder shared with the user's own files (or pointed at the wrong place) never loses
    them. Several stores (processes) may share one folder: names are claimed exclusively.
    """

    def __init__(self, folder: str | Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise SinkError(f"clip store size must be a positive number of bytes, got "
                            f"{max_bytes!r}")  # fmt: skip
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot use {self.folder} for clips: {exc.strerror}") from None
        if not os.access(self.folder, os.W_OK | os.X_OK):  # said now, not at every event
            raise SinkError(f"cannot use {self.folder} for clips: the folder is not writable")
        self.max_bytes = max_bytes
        self.index = self.folder / INDEX
        if self.index.is_symlink() or (self.index.exists() and not self.index.is_file()):
            raise SinkError(f"cannot use {self.folder} for clips: {INDEX} there is not the "
                            "store's own index file (a link or a folder); remove it")
        self.deleted = 0
        self._seq = 0

    def path(self, stem: str, suffix: str) -> Path:
        """A new, empty file of this store's, ordered by time of creation. Created exclusively
        and then listed in the index: two processes on one folder in the same second once got
        the same name and overwrote each other's snapshots. Its siblings (same name, other
        suffix: the event's .json and .avi) are the store's too."""
        while True:
            self._seq += 1
            name = f"{time.strftime('%Y%m%d-%H%M%S')}-{self._seq:06d}-{stem}"
            path = self.folder / f"{name}{suffix}"
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:  # another store's (or the user's): take the next number
                continue
            except OSError as exc:
                self._room_or_raise(exc, path)
                continue
            try:
                self._record(name)
                return path
            except OSError as exc:  # not listed: not the store's, so not left behind
                path.unlink(missing_ok=True)
                self._room_or_raise(exc, path)

    def write(self, path: Path, data: bytes) -> None:
        """Write one file whole. A full disk (below the cap) makes room the way the cap does,
        the store's oldest files first: new events were lost while old ones were kept, and
        a cut-off file was left behind."""
        while True:
            try:
                _write_whole(path, data)
                return
            except OSError as exc:
                self._room_or_raise(exc, path, len(data))

    def make_room(self, path: Path, need: int) -> None:
        """Delete the store's oldest files (not `path`'s event's) until `need` bytes are free:
        for a file whose writer does not say the disk is full (OpenCV's). A file that would
        not fit even with all of them gone deletes none and raises SinkError."""
        while True:
            try:
                disk = os.statvfs(self.folder)
            except OSError:  # cannot tell: let the write find out
                return
            if disk.f_bavail * disk.f_frsize >= need:
                return
            self._room_or_raise(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path, need)

    def _room_or_raise(self, exc: OSError, path: Path, need: int = 0) -> None:
        """After a failed write: on a full disk, delete the oldest file and return (try again);
        otherwise, or with nothing left to delete, raise it as a SinkError. A file that would
        not fit even with all the older ones gone deletes none of them (a clip larger than
        the disk once emptied the store and was not written either)."""
        if exc.errno not in FULL:
            why = exc.strerror
        elif not self._fits(path, need):
            why = (f"{exc.strerror}: its {need} bytes do not fit even with the store's older "
                   "files deleted")  # fmt: skip
        elif self._drop_oldest(path):
            return
        else:
            why = exc.strerror
        raise SinkError(f"cannot write {path.name} in {self.folder}: {why}") from None

    def _open_index(self, flags: int, mode: str):
        """The index file, never through a symlink (a link named .edge-clips would make the
        store append to, or truncate, whatever file it points at)."""
        fd = os.open(self.index, flags | os.O_NOFOLLOW, 0o644)
        return open(fd, mode, encoding="utf-8", errors="replace")  # noqa: SIM115

    def _record(self, name: str) -> None:
        """Add `name` to the index (under a lock: other processes append too)."""
        with self._open_index(os.O_WRONLY | os.O_APPEND | os.O_CREAT, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(name + "\n")
            f.flush()

    def _names(self) -> set[str]:
        """The names in the index (none yet: the store owns nothing)."""
        try:
            with self._open_index(os.O_RDONLY, "r") as f:
                fcntl.flock(f, fcntl.LOCK_SH)
                return set(f.read().splitlines()) - {""}  # "": the index itself
        except FileNotFoundError:
            return set()

    def _others(self, keep: Path) -> list[tuple[Path, os.stat_result]]:
        """The store's files that are not part of `keep`'s event."""
        mine = _event(keep.name)
        return [f for f in self._own() if _event(f[0].name) != mine]

    def _fits(self, path: Path, need: int) -> bool:
        """Whether `need` bytes could fit once the store's other files are deleted."""
        try:
            disk = os.statvfs(self.folder)
        except OSError:  # cannot tell: try
            return True
        room = disk.f_bavail * disk.f_frsize + sum(st.st_size for _, st in self._others(path))
        return need <= room

    def _drop_oldest(self, keep: Path) -> bool:
        """Delete the store's oldest file that is not part of `keep`'s event; False if none."""
        files = self._others(keep)
        if not files:
            return False
        oldest = min(files, key=lambda f: (f[1].st_mtime_ns, f[0].name))[0]
        oldest.unlink(missing_ok=True)
        self.deleted += 1
        return True

    def enforce(self) -> None:
        """Delete the store's oldest files until they fit the cap; keep the index short."""
        files = sorted(self._own(), key=lambda f: (f[1].st_mtime_ns, f[0].name))
        total = sum(st.st_size for _, st in files)
        for p, st in files:
            if total <= self.max_bytes:
                break
            total -= st.st_size
            p.unlink(missing_ok=True)
            self.deleted += 1
        self._compact()

    def _compact(self) -> None:
        """Drop the names whose files are all gone, once there are many: the index would
        otherwise grow by every event ever saved."""
        if len(self._names()) <= 2 * len(self._own()) + COMPACT_SLACK:
            return
        with self._open_index(os.O_RDWR, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # appends wait; names added before this are read
            names = f.read().splitlines()
            present = {c for p in self.folder.iterdir() for c in _stems(p.name)}
            f.seek(0)
            f.truncate()
            f.write("".join(f"{n}\n" for n in dict.fromkeys(names) if n in present))

    def size(self) -> int:
        """Bytes of the store's own files."""
        return sum(st.st_size for _, st in self._own())

    def _own(self) -> list[tuple[Path, os.stat_result]]:
        """The store's files (named in the index; regular files, symlinks not followed), with
        their stat."""
        names = self._names()
        own = []
        for p in self.folder.iterdir():
            if names.isdisjoint(_stems(p.name)):
                continue
            try:
                st = p.lstat()
            except FileNotFoundError:  # removed meanwhile
                continue
            if stat.S_ISREG(st.st_mode):
                own.append((p, st))
        return own


@dataclass
class _Pending:
    """A clip waiting for its frames after the event."""

    path: Path
    frames: list[np.ndarray]
    remaining: int
    meta: dict = field(default_factory=dict)
    stream: str = ""  # whose frames complete it


class EventClipSink(Sink):
    def __init__(self, folder: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 kinds: set[str] | frozenset[str] = DEFAULT_KINDS, clip_seconds: float = 0.0,
                 fps: float | None = None, client: Any = None,
                 stream: str = "snapshots") -> None:  # fmt: skip
        """`clip_seconds`: seconds before and after the event in a clip (0: snapshots only);
        `fps`: frames per second of the clip buffer (default: the source's, else 10);
        `client`: an `MqttSync` to ship snapshots through (low priority)."""
        self.store = ClipStore(folder, max_bytes)
        self.name = f"clips {self.store.folder.name}"
        self.kinds = frozenset(kinds)
        self.clip_seconds = float(clip_seconds)
        self.fps = fps
        self.client = client
        self.stream = stream
        self.snapshots = self.clips = 0
        self._buffers: dict[str, deque] = {}
        self._stream = ""  # the source's name, from open()
        self._pending: list[_Pending] = []
        self._low = 0
        if client is not None:
            from sync import Priority

            self._low = int(Priority.LOW)

    def open(self, info: StreamInfo) -> None:
        self.fps = self.fps or info.fps or 10.0
        self._stream = info.source

    def write(self, result: FrameResult) -> None:
        source = getattr(result, "name", "") or result.frame.source
        # Buffers go by stream: a folder source names each frame by its image file, and one
        # buffer per file held every image read (a photo folder filled the memory).
        stream = getattr(result, "name", "") or self._stream or source
        image = result.frame.image
        done = []
        for pending in self._pending:
            if pending.stream == stream:
                pending.frames.append(image)
                pending.remaining -= 1
                if pending.remaining <= 0:
                    done.append(pending)
        failure = self._finish_all(done)
        buffer = self._buffers.setdefault(stream, deque(maxlen=self._clip_frames() + 1))
        buffer.append(image)
        for event in result.events:
            if event.kind in self.kinds:
                self._snapshot(source, stream, result, event, list(buffer))
        if failure is not None:
            raise failure

    def end(self, events: tuple[Event, ...]) -> None:
        failure = self._finish_all(list(self._pending))  # the stream ended: keep what there is
        if failure is not None:
            raise failure

    def _finish_all(self, pendings: list[_Pending]) -> SinkError | None:
        """Write these clips; the first failure is returned, after every clip had its turn
        (one clip that could not be written lost the others, and this frame's snapshots)."""
        failure = None
        for pending in pendings:
            try:
                self._finish(pending)
            except SinkError as exc:
                failure = failure or exc
        return failure

    def _clip_frames(self) -> int:
        return round(self.clip_seconds * (self.fps or 10.0))

    def _snapshot(self, source: str, stream: str, result: FrameResult, event: Event,
                  before: list[np.ndarray]) -> None:  # fmt: skip
        image = result.frame.image.copy()
        box = _box_of(result, event.tracker_id)
        if box is not None:
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            cv2.rectangle(image, (x1, y1), (x2, y2), (0, 0, 255), 2)
        # The stream's name, else the file's (a single source's frames carry its full path,
        # which filled the 80 characters and cut the event's kind and track id off the end)
        short = getattr(result, "name", "") or default_name(source)
        stem = f"{_safe(short)[:64]}-{_safe(event.kind)}-{event.tracker_id}"
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise SinkError(f"could not encode a snapshot for {source}")
        jpeg_path = self.store.path(stem, ".jpg")
        self.store.write(jpeg_path, jpeg.tobytes())
        meta = {"source": source, "frame": result.frame.index,
                "timestamp": result.frame.timestamp, "event": event.to_dict(),
                "box": None if box is None else [round(float(v), 1) for v in box],
                "snapshot": jpeg_path.name}  # fmt: skip
        if self._clip_frames() > 0:
            clip = _Pending(jpeg_path.with_suffix(".avi"), before, self._clip_frames(), meta,
                            stream)
            meta["clip"] = clip.path.name
            self._pending.append(clip)
        self.store.write(jpeg_path.with_suffix(".json"), json.dumps(meta).encode())
        self.snapshots += 1
        if self.client is not None:
            payload = {**meta, "jpeg_base64": base64.b64encode(jpeg.tobytes()).decode()}
            self.client.publish(self.stream, payload, priority=self._low)
        self.store.enforce()

    def _finish(self, pending: _Pending) -> None:
        """Write the clip whole (a full disk makes room like a snapshot does); one that cannot
        be written is taken out of its event's metadata."""
        self._pending.remove(pending)
        try:
            self._write_clip(pending)
        except SinkError:
            pending.meta["clip"] = None
            try:
                self.store.write(pending.path.with_suffix(".json"),
                                 json.dumps(pending.meta).encode())  # fmt: skip
            except SinkError:
                pending.path.with_suffix(".json").unlink(missing_ok=True)  # names no clip
            raise
        self.clips += 1
        self.store.enforce()

    def _write_clip(self, pending: _Pending) -> None:
        """OpenCV writes the clip under a hidden name, which becomes the clip once OpenCV reads
        it back whole; else the store frees its oldest files and it is written once more.
        OpenCV's writer ignores a full disk: it left cut-off .avi files that did not play."""
        h, w = pending.frames[0].shape[:2]
        frames = [f if f.shape[:2] == (h, w) else cv2.resize(f, (w, h)) for f in pending.frames]
        part = pending.path.with_name(f".{pending.path.stem}{PART}{pending.path.suffix}")
        if not self._write_video(part, frames):
            self.store.make_room(part, _clip_size(frames))
            if not self._write_video(part, frames):
                raise SinkError(f"cannot write {pending.path.name} in {self.store.folder}: "
                                "OpenCV could not write it whole (is the disk full?)")  # fmt: skip
        try:
            os.replace(part, pending.path)
        except OSError as exc:  # e.g. deleted by another store on the folder meanwhile
            part.unlink(missing_ok=True)
            raise SinkError(f"cannot write {pending.path.name} in {self.store.folder}: "
                            f"{exc.strerror}") from None  # fmt: skip

    def _write_video(self, path: Path, frames: list[np.ndarray]) -> bool:
        """Write `frames` to `path` as MJPG AVI; True if it reads back whole, else no file."""
        h, w = frames[0].shape[:2]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"),
                                 float(self.fps or 10.0), (w, h))  # fmt: skip
        if not writer.isOpened():
            path.unlink(missing_ok=True)
            raise SinkError(f"OpenCV cannot write {path.name} in {self.store.folder}")
        for frame in frames:
            writer.write(frame)
        writer.release()
        if _whole(path, len(frames)):
            return True
        path.unlink(missing_ok=True)
        return False


def _whole(path: Path, frames: int) -> bool:
    """Whether OpenCV reads `frames` frames in the video at `path`, the last one included (a
    cut-off file's header says -1 frames, or it does not open)."""
    video = cv2.VideoCapture(str(path))
    try:
        if not video.isOpened() or int(video.get(cv2.CAP_PROP_FRAME_COUNT)) != frames:
            return False
        video.set(cv2.CAP_PROP_POS_FRAMES, frames - 1)
        return bool(video.read()[0])
    finally:
        video.release()


def _clip_size(frames: list[np.ndarray]) -> int:
    """The bytes a clip of these frames is taken to need (see CLIP_MARGIN)."""
    jpegs = sum(len(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1])
                for f in frames)  # fmt: skip
    return int(jpegs * CLIP_MARGIN) + CLIP_OVERHEAD


def _event(name: str) -> str:
    """The event a file of the store's belongs to: its name without the suffix (and a clip
    being written, `.NAME.part.avi`, is NAME's too)."""
    return _stems(name)[-1] if _is_part(name) else name.rsplit(".", 1)[0]


def _is_part(name: str) -> bool:
    return name.startswith(".") and f"{PART}." in name


def _stems(name: str) -> list[str]:
    """`name` without its suffixes, one at a time: a.b.jpg -> [a.b, a] (a source's name may
    have dots; an index name owns its files of any suffix)."""
    out = []
    if _is_part(name):  # .NAME.part.avi -> NAME.part, NAME
        name = name[1:]
    while "." in name:
        name = name.rsplit(".", 1)[0]
        out.append(name)
    return out


def _write_whole(path: Path, data: bytes) -> None:
    """Write `data` to `path`, or leave no file at all."""
    try:
        with open(path, "wb") as f:
            f.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _box_of(result: FrameResult, tracker_id: int) -> np.ndarray | None:
    dets = result.result
    ids = getattr(dets, "tracker_ids", None)
    if ids is None:
        return None
    rows = np.flatnonzero(ids == tracker_id)
    return dets.xyxy[rows[0]] if len(rows) else None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:80]
