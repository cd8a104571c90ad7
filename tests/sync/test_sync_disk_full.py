"""A full disk under the outbox: publish() refuses clearly, and once the broker is reachable
everything accepted is delivered (deleting delivered rows makes room) - on a real 512 KB tmpfs.

Mounting needs root (CI runs as root); elsewhere these tests skip with the reason.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal

import pytest
from synctest_broker import wait_for

from sync import MqttSync, OutboxError
from sync.envelope import decode_envelope
from sync.journal import journal_files, scan
from sync.outbox import Outbox

FAST = {"keepalive": 2, "backoff_initial": 0.05, "backoff_cap": 0.5, "telemetry_interval": 3600}
PAD = "x" * 500


def publish_until_full(s: MqttSync, limit: int = 20_000) -> int:
    """Publish until the outbox refuses; returns how many were accepted."""
    for n in range(limit):
        try:
            s.publish("d", {"i": n, "pad": PAD})
        except OutboxError as exc:
            assert "disk full" in str(exc) or "No space" in str(exc), exc
            return n
    raise AssertionError(f"a 512 KB disk took {limit} messages")


def received_seqs(rec) -> set[int]:
    return {decode_envelope(m.payload).seq for m in list(rec.messages)}


def test_full_disk_drains_when_the_broker_comes_back(
    small_disk, broker, recorder_factory, caplog
):
    """Issue 10.1: with the disk full, nothing was ever sent after the broker came back (the
    network thread looped on "cannot rollback - no transaction is active")."""
    caplog.set_level(logging.INFO, logger="sync")
    rec = recorder_factory(broker.port, ["edge/default/full/d"], session="full-sub")
    broker.stop(signal.SIGTERM)  # keeps the subscriber's session
    s = MqttSync(broker.url, "full", small_disk / "o.db", **FAST).start()
    try:
        accepted = publish_until_full(s)
        assert accepted > 100
        broker.start()
        wait_for(lambda: received_seqs(rec) >= set(range(1, accepted + 1)), 60,
                 f"all {accepted} accepted messages at the subscriber")
        wait_for(lambda: not s.state().outbox.disk_full, 30, "room on the disk again")
        receipt = s.publish("d", {"i": accepted, "pad": PAD})
        assert receipt.seq == accepted + 1
        wait_for(lambda: accepted + 1 in received_seqs(rec), 30, "a message after the drain")
    finally:
        s.close()
    messages = [r.getMessage() for r in caplog.records]
    assert not any("cannot rollback" in m for m in messages)
    full = [r for r in caplog.records if r.levelno >= logging.ERROR and "disk full" in r.message]
    assert len(full) == 1, "the cause is logged once, not once per retry"
    assert not any(r.exc_info for r in caplog.records), "no tracebacks"


def test_write_cut_short_by_a_full_disk_leaves_no_torn_frame(small_disk):
    """Issue 10.2, the writer's side: a short write on a full disk used to stay in the journal
    as a torn frame, and records accepted after it were lost to the next replay."""
    path = small_disk / "o.db"
    box = Outbox(path, 1 << 20, ingest_interval=3600, reserve_bytes=64 * 1024)
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - 10_000))  # leave ~10 KB
    accepted = 0
    with pytest.raises(OutboxError, match="short write|No space"):
        for i in range(100):  # 3000-byte frames: the one that does not fit is cut short
            box.append("a", 1, lambda seq, i=i: json.dumps({"i": i, "pad": "x" * 3000}).encode())
            accepted += 1
    (journal,) = journal_files(path)
    records, skipped = scan(journal.read_bytes())
    assert skipped == 0, "the torn bytes were left in the journal"
    assert [r.seq for r in records] == list(range(1, accepted + 1))
    (small_disk / "filler").unlink()
    box.close()
    with Outbox(path, 1 << 20) as again:
        assert again.next_seq("a") == accepted + 1


def fill(path) -> None:
    """Write zeros to `path` until the disk takes no more (down to the last byte)."""
    with open(path, "ab", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            try:
                while f.write(b"\0" * size) == size:
                    pass
            except OSError:
                pass


def test_records_a_full_disk_keeps_from_committing_stay_in_their_journal(small_disk, tmp_path):
    """The disk stays full after the outbox released its reserve (whatever filled it takes
    that room too): a flush that cannot commit must keep the journal holding the records. It
    used to delete it while making room, leaving the records only in memory, so a process
    killed then lost them. A copy of the files taken then is what a kill leaves behind."""
    path = small_disk / "o.db"
    box = Outbox(path, 1 << 20, ingest_interval=3600, reserve_bytes=64 * 1024)
    for i in range(20):
        box.append("a", 1, lambda seq, i=i: json.dumps({"i": i}).encode())
    fill(small_disk / "filler")
    with pytest.raises(OutboxError):
        box.append("a", 1, lambda seq: b'"' + b"x" * 8000 + b'"')  # releases the reserve
    fill(small_disk / "filler-2")  # ... which the other writer takes as well
    for _ in range(3):  # as the ingest thread retries
        with pytest.raises(OutboxError, match="cannot commit"):
            box.flush()
    assert len(journal_files(path)) <= 2  # the records' journal, and one empty new one
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for f in small_disk.glob("o.db*"):
        shutil.copy(f, crashed / f.name)
    with Outbox(crashed / "o.db", 1 << 20, ingest_interval=3600) as after_kill:
        assert after_kill.stats().depth == 20
    for f in small_disk.glob("filler*"):
        f.unlink()
    box.close()
    with Outbox(path, 1 << 20) as again:
        assert again.stats().depth == 20
