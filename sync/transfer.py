"""Moving a bundle to devices: one archive, cut in chunks, each with its own sha256.

Fleet side: `pack_bundle` makes the archive (flat tar of the bundle's files), `plan_blob`
hashes it chunk by chunk, `publish_blob` puts every chunk on the broker as a *retained* QoS 1
message on ``edge/{fleet}/_blobs/{sha256}/{index}``. Retained, so a device that comes online
next week still finds them without a fleet process running.

Device side, two ways, both resumable from what is already on disk (a chunk counts as done
when its bytes in the .part file hash to the planned sha256, so nothing needs a journal):
- `MqttChunkFetcher`: subscribes to a small window of missing chunks at a time (flow
  control: at most `window` chunks in flight, so telemetry on the device's other connection
  keeps flowing), checks each chunk's sha256, writes it at its offset. A chunk that fails the
  check is counted, asked for again (``.../{device}/blob_need``) and re-fetched.
- `http_fetch`: ``http(s)://`` with a ``Range`` request from the first missing byte.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from sync import topics
from sync.connection import RECONNECT_WAIT, publish_acked
from sync.errors import PayloadError, SyncError

CHUNK_SIZE = 256 * 1024
MAX_CHUNKS = 16384  # 4 GB at the default chunk size
MAX_BLOB_BYTES = 4 << 30  # the largest bundle archive a device accepts, whatever the chunk size
MAX_NEED = 64  # chunks one blob_need message may ask for
MAX_NEED_BYTES = 16 * 1024
BLOBS = "_blobs"
NEED = "blob_need"  # device -> fleet: please publish these chunks again
_HEX64 = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class BlobPlan:
    """An archive's size, hash and per-chunk hashes: what a device checks each chunk with."""

    sha256: str
    size: int
    chunk_size: int
    chunks: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["chunks"] = list(self.chunks)
        return out

    @classmethod
    def from_dict(cls, d: Any) -> BlobPlan:
        """Validate an untrusted plan (it comes in a deployment message)."""
        if not isinstance(d, dict):
            raise PayloadError("blob plan must be an object")
        sha, size, chunk, chunks = d.get("sha256"), d.get("size"), d.get("chunk_size"), d.get(
            "chunks")
        if not _is_hex64(sha):
            raise PayloadError("blob sha256 must be 64 lowercase hex digits")
        if not isinstance(chunk, int) or isinstance(chunk, bool) or not (
                4096 <= chunk <= 16 << 20):
            raise PayloadError("chunk_size must be an integer between 4096 and 16 MB")
        limit = min(chunk * MAX_CHUNKS, MAX_BLOB_BYTES)
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= limit:
            raise PayloadError(f"blob size must be between 1 and {limit} bytes")
        if not isinstance(chunks, list) or len(chunks) != -(-size // chunk) or not all(
                map(_is_hex64, chunks)):
            raise PayloadError("chunks must list one sha256 per chunk")
        return cls(sha, size, chunk, tuple(chunks))

    def span(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(self.size, start + self.chunk_size)


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX64


def parse_need(payload: bytes) -> tuple[str, list[int]] | None:
    """A device's untrusted ``blob_need`` message: (blob sha256, chunk indexes), or None if
    malformed (not JSON, wrong types, an index out of range, more than MAX_NEED chunks)."""
    if len(payload) > MAX_NEED_BYTES:
        return None
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(body, dict) or not _is_hex64(body.get("blob")):
        return None
    chunks = body.get("chunks")
    if not isinstance(chunks, list) or not 0 < len(chunks) <= MAX_NEED or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_CHUNKS
            for i in chunks):
        return None
    return body["blob"], sorted(set(chunks))


def blob_topic(fleet: str, sha256: str, index: int | None = None) -> str:
    base = f"{topics.ROOT}/{fleet}/{BLOBS}/{sha256}"
    return base if index is None else f"{base}/{index}"


# -- fleet side -------------------------------------------------------------------------------


def pack_bundle(folder: Path, out: Path) -> Path:
    """A flat, uncompressed tar of the bundle folder's regular files, in a stable order."""
    if not Path(folder).is_dir():
        raise SyncError(f"bundle folder {folder} does not exist; pass the folder that "
                        "`edge-opt export` wrote")
    out = Path(out)
    if Path(os.path.realpath(out)).parent == Path(folder).resolve():
        raise SyncError(f"the archive {out} would be written inside the bundle folder {folder} "
                        "(over its files, or into the next archive); write it elsewhere")
    # Written next to `out` and renamed into place: an archive cut short never replaces a
    # good one, and the name never holds half an archive a web server could serve.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        _pack(Path(folder), tmp)
        os.replace(tmp, out)
    except OSError as exc:
        raise SyncError(f"cannot write the bundle archive {out}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _pack(folder: Path, out: Path) -> Path:
    names = sorted(p.name for p in Path(folder).iterdir() if p.is_file() and not p.is_symlink()
                   and not p.name.startswith("."))
    if "manifest.json" not in names:
        raise SyncError(f"{folder} is not a bundle (no manifest.json); pass the folder that "
                        "`edge-opt export` wrote")
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            info = tar.gettarinfo(str(Path(folder) / name), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with open(Path(folder) / name, "rb") as f:
                tar.addfile(info, f)
    return out


def plan_blob(path: Path, chunk_size: int = CHUNK_SIZE) -> BlobPlan:
    whole, chunks = hashlib.sha256(), []
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            whole.update(block)
            chunks.append(hashlib.sha256(block).hexdigest())
    return BlobPlan(whole.hexdigest(), os.path.getsize(path), chunk_size, tuple(chunks))


def publish_blob(client: mqtt.Client, fleet: str, path: Path, plan: BlobPlan,
                 indexes: list[int] | None = None, timeout: float = 600.0,
                 reconnect_wait: float = RECONNECT_WAIT) -> None:
    """Publish chunks retained at QoS 1 and wait for the broker's PUBACKs (loop running); a
    lost connection is waited out as for a deployment (`publish_acked`), not fatal at once."""
    with open(path, "rb") as f:
        for index in range(len(plan.chunks)) if indexes is None else indexes:
            start, end = plan.span(index)
            f.seek(start)
            publish_acked(client, blob_topic(fleet, plan.sha256, index), f.read(end - start),
                          retain=True, what=f"chunk {index} of the bundle",
                          then="run the command again once it is back (chunks the broker "
                               "already holds are kept)",
                          ack_timeout=timeout, reconnect_wait=reconnect_wait)


def clear_blob(client: mqtt.Client, fleet: str, plan: BlobPlan) -> None:
    """Remove the retained chunks (an empty retained message clears one)."""
    for index in range(len(plan.chunks)):
        client.publish(blob_topic(fleet, plan.sha256, index), b"", qos=1, retain=True)


# -- device side ------------------------------------------------------------------------------


def done_chunks(part: Path, plan: BlobPlan) -> set[int]:
    """Chunks already in the .part file with the right bytes (resume after any crash)."""
    done: set[int] = set()
    if not part.exists():
        return done
    with open(part, "rb") as f:
        for index, expected in enumerate(plan.chunks):
            start, end = plan.span(index)
            f.seek(start)
            data = f.read(end - start)
            if len(data) == end - start and hashlib.sha256(data).hexdigest() == expected:
                done.add(index)
    return done


def _write_chunk(part: Path, plan: BlobPlan, index: int, data: bytes) -> None:
    fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, plan.span(index)[0])
    finally:
        os.close(fd)


Progress = Callable[[int, int], None]  # (bytes done, total)


class MqttChunkFetcher:
    """Fetch a blob's chunks over an already connected client (its loop running elsewhere).

    The caller routes messages on ``edge/{fleet}/_blobs/#`` to `on_message`."""

    def __init__(self, client: mqtt.Client, fleet: str, device: str, plan: BlobPlan,
                 part: Path, *, window: int = 4, progress: Progress | None = None,
                 stop: threading.Event | None = None, retry_after: float = 2.0,
                 stall_timeout: float = 300.0) -> None:
        self.client, self.fleet, self.device, self.plan, self.part = (
            client, fleet, device, plan, part)
        self.window = max(1, window)
        self.progress = progress
        self.stop = stop or threading.Event()
        self.retry_after = retry_after
        self.stall_timeout = stall_timeout  # no new chunk for this long: SyncError (retried)
        self._last_chunk = time.monotonic()
        self.bad_chunks = 0  # chunks that failed their sha256 (re-fetched)
        self.failure: str | None = None
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._done: set[int] = set()
        self._asked: dict[int, float] = {}  # chunk -> when subscribed

    def on_message(self, msg: mqtt.MQTTMessage) -> None:
        prefix = blob_topic(self.fleet, self.plan.sha256) + "/"
        if not msg.topic.startswith(prefix):
            return
        try:
            index = int(msg.topic[len(prefix):])
        except ValueError:
            return
        with self._lock:
            if index not in self._asked or index in self._done:
                return
        expected = self.plan.chunks[index] if 0 <= index < len(self.plan.chunks) else None
        if not msg.payload:  # cleared: nobody publishes this blob now; ask again later
            return
        if hashlib.sha256(msg.payload).hexdigest() != expected:
            with self._lock:
                self.bad_chunks += 1
                self._asked.pop(index, None)
            self.client.unsubscribe(blob_topic(self.fleet, self.plan.sha256, index))
            self._need([index])
            return
        try:
            _write_chunk(self.part, self.plan, index, msg.payload)
        except OSError as exc:  # e.g. a full disk: run() reports it and the agent retries
            self.failure = f"cannot write the download to {self.part}: {exc.strerror}"
            return
        self.client.unsubscribe(blob_topic(self.fleet, self.plan.sha256, index))
        with self._lock:
            self._done.add(index)
            self._asked.pop(index, None)
            self._last_chunk = time.monotonic()
            self._arrived.notify_all()

    def resubscribe(self) -> None:
        """After a reconnect (a clean session forgets subscriptions): ask for the window again."""
        with self._lock:
            self._asked.clear()
            self._last_chunk = time.monotonic()  # the time offline does not count as a stall
            self._arrived.notify_all()

    def run(self) -> None:
        """Return when every chunk is on disk with its planned hash; SyncError if stopped."""
        self._done = done_chunks(self.part, self.plan)
        self._last_chunk = time.monotonic()
        total = len(self.plan.chunks)
        while True:
            with self._lock:
                if len(self._done) == total:
                    break
                now = time.monotonic()
                stalled = now - self._last_chunk > self.stall_timeout
                for index, since in list(self._asked.items()):
                    if now - since > self.retry_after * 5:  # lost: subscribe again
                        self._asked.pop(index)
                wanted = [i for i in range(total) if i not in self._done and i not in self._asked]
                room = self.window - len(self._asked)
                for index in wanted[:max(0, room)]:
                    self._asked[index] = now
                    self.client.subscribe(blob_topic(self.fleet, self.plan.sha256, index), qos=1)
                done_bytes = sum(self.plan.span(i)[1] - self.plan.span(i)[0] for i in self._done)
            if self.progress is not None:
                self.progress(done_bytes, self.plan.size)
            if self.stop.is_set():
                raise SyncError("download stopped")
            if self.failure is not None:
                raise SyncError(self.failure)
            if stalled:
                raise SyncError(f"no chunk of the bundle arrived for {self.stall_timeout:.0f} s "
                                "(is it still published? `edge-fleet deploy --wait` republishes "
                                "missing chunks)")
            with self._lock:
                self._arrived.wait(self.retry_after / 4)
        if self.progress is not None:
            self.progress(self.plan.size, self.plan.size)

    def _need(self, indexes: list[int]) -> None:
        body = json.dumps({"blob": self.plan.sha256, "chunks": indexes})
        self.client.publish(topics.topic(self.fleet, self.device, NEED), body, qos=1)


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """A redirect may only lead to http(s): urllib would follow one to ftp:// too."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: PLR0913
        if not newurl.lower().startswith(("http://", "https://")):
            raise urllib.error.URLError(f"redirected to {newurl[:80]!r}, not http(s)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpRedirectsOnly)


def http_fetch(url: str, part: Path, plan: BlobPlan, *, progress: Progress | None = None,
               stop: threading.Event | None = None, timeout: float = 30.0) -> None:
    """Download `url` into `part`, resuming from the first missing chunk with Range."""
    if not url.startswith(("http://", "https://")):
        raise PayloadError(f"bundle URL {url[:80]!r} must be http:// or https://")
    done = done_chunks(part, plan)
    first = next((i for i in range(len(plan.chunks)) if i not in done), None)
    if first is None:
        return
    offset = plan.span(first)[0]
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"})
    try:
        response = _OPENER.open(request, timeout=timeout)  # scheme checked, redirects too
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise SyncError(f"cannot download {url}: {exc}") from None
    with response:
        if response.status == 200:
            offset = 0  # the server ignored Range: start over
        elif response.status != 206:
            raise SyncError(f"cannot download {url}: HTTP {response.status}")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            position = offset
            while position < plan.size:
                if stop is not None and stop.is_set():
                    raise SyncError("download stopped")
                block = response.read(min(plan.chunk_size, plan.size - position))
                if not block:
                    break
                os.pwrite(fd, block, position)
                position += len(block)
                if progress is not None:
                    progress(position, plan.size)
        except (OSError, http.client.HTTPException) as exc:  # e.g. IncompleteRead: retried
            raise SyncError(f"download of {url} interrupted: {type(exc).__name__}: {exc}"
                            ) from None
        finally:
            os.close(fd)
    missing = set(range(len(plan.chunks))) - done_chunks(part, plan)
    if missing:
        raise SyncError(f"download of {url} is incomplete or damaged ({len(missing)} chunk(s) "
                        "do not match their sha256); it is retried")

