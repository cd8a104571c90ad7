"""The outbox on its own: order, sequence numbers across restarts, bounded size, crash safety."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from synctest_broker import subprocess_env
from synctest_publisher import payload

from sync import OutboxError, PayloadError
from sync.envelope import decode_envelope
from sync.journal import Record, encode_record, journal_files
from sync.outbox import Outbox

PUBLISHER = Path(__file__).with_name("synctest_publisher.py")


def body(tag: str, size: int = 0):
    return lambda seq: json.dumps({"tag": tag, "seq": seq, "pad": "x" * size}).encode()


def tags(box: Outbox) -> list[str]:
    box.flush()
    return [json.loads(m.body)["tag"] for m in box.read_after(0, 10_000)]


def test_append_keeps_order_and_numbers_each_stream(tmp_path):
    with Outbox(tmp_path / "o.db", 1 << 20) as box:
        got = [box.append(s, 1, body(f"{s}{i}")) for i in range(3) for s in ("a", "b")]
        assert got == [(1, True), (1, True), (2, True), (2, True), (3, True), (3, True)]
        box.flush()
        rows = box.read_after(0, 100)
        assert [(m.stream, m.seq) for m in rows] == [
            ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)
        ]
        assert box.read_after(rows[2].rowid, 2) == rows[3:5]
        assert box.stats().depth == 6


@pytest.mark.parametrize("fsync", [False, True])
def test_sequence_continues_after_reopen_even_when_everything_was_delivered(tmp_path, fsync):
    path = tmp_path / "o.db"
    with Outbox(path, 1 << 20, fsync=fsync) as box:
        for i in range(5):
            box.append("a", 1, body(str(i)))
        box.flush()
        assert box.remove([m.rowid for m in box.read_after(0, 100)]) == 5
        assert box.stats().depth == 0 and box.stats().bytes == 0
    with Outbox(path, 1 << 20) as box:
        assert box.next_seq("a") == 6
        assert box.append("a", 1, body("x")) == (6, True)
        assert box.next_seq("new") == 1


def test_rowids_never_go_back_when_the_outbox_empties(tmp_path):
    path = tmp_path / "o.db"
    with Outbox(path, 1 << 20) as box:
        box.append("a", 1, body("1"))
        box.flush()
        first = box.read_after(0, 10)[0].rowid
        box.remove([first])
        box.append("a", 1, body("2"))
        box.flush()
        assert box.read_after(first, 10)[0].rowid > first
        box.remove([m.rowid for m in box.read_after(0, 10)])
    with Outbox(path, 1 << 20) as box:  # also across a restart
        box.append("a", 1, body("3"))
        box.flush()
        assert box.last_rowid > first + 1


def test_remove_ignores_rows_already_gone(tmp_path):
    with Outbox(tmp_path / "o.db", 1 << 20) as box:
        for i in range(4):
            box.append("a", 1, body(str(i)))
        box.flush()
        ids = [m.rowid for m in box.read_after(0, 100)]
        assert box.remove(ids[:2]) == 2
        assert box.remove(ids[:3]) == 1
        assert tags(box) == ["3"]
        assert box.stats().depth == 1


def test_full_outbox_drops_lowest_priority_oldest_first_and_counts(tmp_path):
    one = len(body("l0", 200)(1))
    with Outbox(tmp_path / "o.db", max_bytes=one * 6) as box:
        for i in range(3):
            box.append("low", 0, body(f"l{i}", 200))
        for i in range(3):
            box.append("high", 2, body(f"h{i}", 200))
        assert box.stats().depth == 6
        # Full: a NORMAL message evicts the oldest LOW one.
        assert box.append("normal", 1, body("n0", 200)) == (1, True)
        assert tags(box) == ["l1", "l2", "h0", "h1", "h2", "n0"]
        # Another LOW message: the oldest LOW goes, not the newcomer.
        assert box.append("low", 0, body("l3", 200)) == (4, True)
        assert tags(box) == ["l2", "h0", "h1", "h2", "n0", "l3"]
        stats = box.stats()
        assert stats.dropped == {0: 2} and stats.dropped_total == 2
        assert stats.bytes <= stats.max_bytes


def test_newcomer_is_dropped_when_everything_stored_matters_more(tmp_path):
    one = len(body("h0", 200)(1))
    path = tmp_path / "o.db"
    with Outbox(path, max_bytes=one * 2) as box:
        box.append("high", 2, body("h0", 200))
        box.append("high", 2, body("h1", 200))
        seq, stored = box.append("low", 0, body("l0", 200))
        assert (seq, stored) == (1, False)
        assert tags(box) == ["h0", "h1"]
        assert box.stats().dropped == {0: 1}
    with Outbox(path, max_bytes=one * 2) as box:  # counts and numbering survive a restart
        assert box.stats().dropped == {0: 1}
        assert box.next_seq("low") == 2


def test_records_reach_sqlite_without_flush(tmp_path):
    with Outbox(tmp_path / "o.db", 1 << 20, ingest_interval=0.01) as box:
        box.append("a", 1, body("x"))
        deadline = time.monotonic() + 10
        while not box.read_after(0, 10) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [m.seq for m in box.read_after(0, 10)] == [1]


def crash(box: Outbox) -> None:
    """Stop an outbox the way SIGKILL would: no ingestion, no clean close."""
    box._stop.set()
    box._ingester.join()
    box._closed = True
    box._journal.close()
    box._conn.close()
    box._reader.close()
    box._release_file_lock()


def test_journal_replay_skips_what_sqlite_already_has_and_stops_at_a_torn_frame(tmp_path):
    path = tmp_path / "o.db"
    box = Outbox(path, 1 << 20, ingest_interval=3600)
    for i in range(3):
        box.append("a", 1, body(f"early{i}"))
    box.flush()  # seq 1-3 committed to SQLite, and still in the journal file
    for i in range(2):
        box.append("a", 1, body(f"late{i}"))  # seq 4-5 only in the journal
    crash(box)
    (journal,) = journal_files(path)
    with journal.open("ab") as fh:  # what a write cut short by SIGKILL leaves
        fh.write(encode_record(Record("a", 6, 1, body("torn")(6)))[:-3])
    with Outbox(path, 1 << 20) as box:
        assert tags(box) == ["early0", "early1", "early2", "late0", "late1"]
        assert box.next_seq("a") == 6
    assert journal_files(path) == []


def test_journal_files_rotate_and_are_deleted_once_committed(tmp_path, monkeypatch):
    monkeypatch.setattr("sync.outbox._ROTATE_BYTES", 4096)
    path = tmp_path / "o.db"
    box = Outbox(path, 1 << 22, ingest_interval=3600)
    for i in range(100):
        box.append("a", 1, body(f"m{i}", 50))
    first = journal_files(path)
    box.flush()  # commits, starts a new file, deletes the full one
    assert journal_files(path) != first and len(journal_files(path)) == 1
    for i in range(100, 200):
        box.append("a", 1, body(f"m{i}", 50))
    crash(box)  # 100 records only in the journal
    with Outbox(path, 1 << 22) as box:
        assert tags(box) == [f"m{i}" for i in range(200)]
    assert journal_files(path) == []


def test_message_larger_than_outbox_is_refused(tmp_path):
    with Outbox(tmp_path / "o.db", max_bytes=4096) as box, pytest.raises(PayloadError):
        box.append("a", 1, body("big", 5000))


def test_second_process_on_same_outbox_is_refused(tmp_path):
    path = tmp_path / "o.db"
    with Outbox(path, 1 << 20):
        code = (
            "import sys; from sync.outbox import Outbox; from sync import OutboxError\n"
            "try:\n    Outbox(sys.argv[1], 1 << 20)\n"
            "except OutboxError as e:\n    print(e); sys.exit(7)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            capture_output=True, text=True, timeout=60, env=subprocess_env(),
        )
    assert proc.returncode == 7, proc.stderr
    assert "in use by another process" in proc.stdout


def test_concurrent_publishers_get_distinct_contiguous_seqs(tmp_path):
    with Outbox(tmp_path / "o.db", 1 << 24) as box:
        seqs: list[int] = []
        lock = threading.Lock()

        def worker() -> None:
            mine = [box.append("a", 1, body("t"))[0] for _ in range(500)]
            with lock:
                seqs.extend(mine)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(seqs) == list(range(1, 2001))
        box.flush()
        assert [m.seq for m in box.read_after(0, 5000)] == list(range(1, 2001))


def test_closed_outbox_refuses_appends(tmp_path):
    box = Outbox(tmp_path / "o.db", 1 << 20)
    box.close()
    with pytest.raises(OutboxError):
        box.append("a", 1, body("x"))


def test_sigkill_loses_nothing_publish_returned(tmp_path):
    """Kill the publisher with SIGKILL three times while it publishes as fast as it can;
    every message whose publish() had returned must be in the outbox, exactly as produced."""
    outbox = tmp_path / "dev.db"
    total = 60_000
    last_acked = -1
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, str(PUBLISHER), "--broker", "mqtt://127.0.0.1:1",
             "--outbox", str(outbox), "--total", str(total), "--pad", "50"],
            stdout=subprocess.PIPE, text=True, env=subprocess_env(),
        )
        assert proc.stdout is not None
        resume = int(proc.stdout.readline().split()[1])
        # Nothing accepted before the kill may be missing: the restart resumes after it.
        assert resume >= last_acked + 1, f"round {round_}: resumed at {resume}"
        target = resume + 4000
        for line in proc.stdout:
            if line.strip().isdigit() and int(line) >= target:
                break
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=60)
        lines = [ln for ln in rest.split("\n")[:-1] if ln.isdigit()]  # last may be torn
        last_acked = max([target, *map(int, lines)])
        assert proc.returncode == -signal.SIGKILL
    with Outbox(outbox, 1 << 30) as box:
        rows = box.read_after(0, total)
    by_k = {}
    for m in rows:
        env = decode_envelope(m.body)
        k = (env.seq - 1) * 2 + int(env.stream[1:])
        assert env.payload == payload(k, 50)
        by_k[k] = env
    assert set(range(last_acked + 1)) <= set(by_k)
    assert sorted(by_k) == list(range(len(by_k)))  # no holes, no duplicates


def test_unreadable_outbox_is_a_clear_error_and_releases_the_lock(tmp_path):
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not a database" * 100)
    for _ in range(2):  # the second attempt would say "in use" if the lock leaked
        with pytest.raises(OutboxError, match="cannot open outbox"):
            Outbox(path, 1 << 20)


def test_remove_updates_counters_atomically_with_the_rows(tmp_path):
    """Issue 10.5: remove() updated depth/bytes after releasing the SQLite lock, so the slow
    path of append() (which decides on evictions holding that lock) could see the rows gone
    but their bytes still counted, and evict a message that did not need to go.

    The interleaving is forced: the counters' lock is held while remove() commits; from then
    on, whoever can take the SQLite lock must see counters that agree with the rows."""
    with Outbox(tmp_path / "o.db", max_bytes=1 << 20) as box:
        for i in range(4):
            box.append("low", 0, body(f"m{i}"))
        box.flush()
        oldest = box.read_after(0, 1)[0].rowid
        watcher = sqlite3.connect(tmp_path / "o.db")
        with box._lock:
            remover = threading.Thread(target=box.remove, args=([oldest],))
            remover.start()
            while watcher.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 4:
                time.sleep(0.001)  # until the delete is committed
            if box._db_lock.acquire(timeout=0.5):  # remove() let go of the rows' lock ...
                try:  # ... so the counters must already say what the table says
                    assert (box.depth, box.bytes) == watcher.execute(
                        "SELECT COUNT(*), SUM(size) FROM messages").fetchone()
                finally:
                    box._db_lock.release()
        remover.join()
        watcher.close()
        assert box.stats().depth == 3


def test_torn_journal_frame_does_not_hide_the_records_after_it_and_seq_never_goes_back(tmp_path):
    """Issue 10.2: a short write (disk full) left a torn frame; publish() then accepted seq
    20-39 behind it; after a crash replay stopped at the torn frame (20-39 lost) and the next
    message got seq 20 again."""
    path = tmp_path / "o.db"
    box = Outbox(path, 1 << 20, ingest_interval=3600)
    for i in range(1, 20):
        box.append("a", 1, body(f"m{i}"))
    (journal,) = journal_files(path)
    with journal.open("ab") as fh:  # what a write cut short by a full disk leaves behind
        fh.write(encode_record(Record("a", 20, 1, body("torn")(20)))[:-7])
    for i in range(20, 40):
        box.append("a", 1, body(f"m{i}"))
    crash(box)
    with Outbox(path, 1 << 20) as box:
        assert tags(box) == [f"m{i}" for i in range(1, 40)]
        assert box.next_seq("a") == 40
        assert box.append("a", 1, body("m40")) == (40, True)


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _foreign(path: Path) -> None:
    path.unlink()
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE users (name TEXT)")
    other.execute("INSERT INTO users VALUES ('ada')")
    other.commit()
    other.close()


def _dropped_table(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("DROP TABLE streams")
    db.commit()
    db.close()


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database" * 100)


def _outbox_with_300_messages(path: Path) -> None:
    with Outbox(path, 1 << 20) as box:
        for i in range(300):
            box.append("a", 1, body(f"m{i}"))


@pytest.mark.parametrize(("damage", "message"), [
    (_zero_bytes, "is empty (0 bytes)"),
    (_foreign, "another program's SQLite database"),
    (_dropped_table, "table streams is missing"),
])
def test_empty_foreign_or_damaged_outbox_is_refused_not_silently_recreated(
    tmp_path, damage, message
):
    """Issue 10.3: a 0-byte outbox was silently recreated (300 messages gone, seq back to 1),
    another program's SQLite file was accepted and modified, a dropped table was recreated."""
    path = tmp_path / "o.db"
    _outbox_with_300_messages(path)
    damage(path)
    before = path.read_bytes()
    with pytest.raises(OutboxError, match=re.escape(message)):
        Outbox(path, 1 << 20)
    assert path.read_bytes() == before, "the file was modified"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.db", "o.db.lock"]


@pytest.mark.parametrize("damage", [_zero_bytes, _dropped_table, _garbage])
def test_damaged_outbox_is_quarantined_loudly_when_asked(tmp_path, damage, caplog):
    path = tmp_path / "o.db"
    _outbox_with_300_messages(path)
    damage(path)
    before = path.read_bytes()
    with Outbox(path, 1 << 20, on_damaged="quarantine") as box:
        moved = Path(box.quarantined)
        assert moved.parent == tmp_path and moved.name.startswith("o.db.damaged-")
        assert moved.read_bytes() == before
        assert box.append("a", 1, body("fresh")) == (1, True)
    assert any(r.levelname == "ERROR" and str(moved) in r.message for r in caplog.records)
    with Outbox(path, 1 << 20) as box:  # the fresh outbox is a proper one
        assert box.quarantined is None and box.next_seq("a") == 2


def test_foreign_sqlite_file_is_never_quarantined(tmp_path):
    path = tmp_path / "o.db"
    _outbox_with_300_messages(path)
    _foreign(path)
    with pytest.raises(OutboxError, match="another program's SQLite database"):
        Outbox(path, 1 << 20, on_damaged="quarantine")
    assert [p.name for p in tmp_path.glob("o.db.damaged-*")] == []
