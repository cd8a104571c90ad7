"""`edge-run --mqtt` with an outbox file it cannot use: inference goes on, the damaged file is
moved aside and reported, results still reach the broker."""

from __future__ import annotations

import pytest
from synctest_broker import wait_for

from sync.envelope import decode_envelope
from tests.conftest import run_cli
from tests.edge_sdk.test_pipeline import tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, data_dir):
    return tiny_bundle("classify", tmp_path_factory, data_dir)


def test_corrupt_outbox_does_not_stop_inference(broker, tmp_path, bundle, data_dir,
                                                 recorder_factory):
    """Issue 10.4: `edge-run ... --mqtt ... --outbox <garbage>` exited having processed 0
    frames. The camera must keep running: quarantine the file, start afresh, report it."""
    rec = recorder_factory(broker.port, ["edge/default/cam-q/#"])
    outbox = tmp_path / "outbox.db"
    garbage = b"\x00garbage, not an outbox\xff" * 64
    outbox.write_bytes(garbage)
    result = run_cli("edge-run", bundle, "--source", data_dir / "eval", "--max-frames", "4",
                     "--mqtt", broker.url, "--device-id", "cam-q", "--outbox", outbox, "-q")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (moved,) = tmp_path.glob("outbox.db.damaged-*")
    assert moved.read_bytes() == garbage
    assert "is damaged (it is not an SQLite database)" in result.stderr and str(moved) in (
        result.stderr
    )
    wait_for(lambda: len(rec.on("edge/default/cam-q/detections")) >= 4, 20, "four results")
    assert [decode_envelope(m.payload).seq for m in rec.on("edge/default/cam-q/detections")][
        :4] == [1, 2, 3, 4]
    statuses = [m.json() for m in rec.on("edge/default/cam-q/status")]
    assert any(s.get("outbox_quarantined") == str(moved) for s in statuses)


def test_an_outbox_path_that_cannot_exist_does_not_stop_inference(broker, tmp_path, bundle,
                                                                  data_dir):
    """A file where the outbox's folder should be (or a card remounted read-only): the MQTT
    sink is skipped with one line and the camera keeps running; it was an OSError traceback
    from taking the outbox's lock."""
    (tmp_path / "afile").write_text("not a folder\n")
    out = tmp_path / "results.jsonl"
    result = run_cli("edge-run", bundle, "--source", data_dir / "eval", "--max-frames", "3",
                     "--mqtt", broker.url, "--device-id", "cam-p", "--jsonl", out,
                     "--outbox", tmp_path / "afile" / "outbox.db", "-q")
    assert "Traceback" not in result.stderr, result.stderr
    assert f"cannot open outbox {tmp_path / 'afile' / 'outbox.db'}" in result.stderr
    assert len(out.read_text().splitlines()) >= 3  # every frame inferred and written
