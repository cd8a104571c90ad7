-- A message is the same message only if its id is the same too: a device whose outbox was
-- replaced starts again at seq 1 with new ids, and those messages must be stored, not dropped
-- as duplicates of the old ones. Re-deliveries (same id) still hit the key and are dropped.
-- SQLite cannot change a primary key in place: the table is rebuilt.
CREATE TABLE messages_002 (
    device TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq BIGINT NOT NULL,
    msg_id TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    received DOUBLE PRECISION NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (device, stream, seq, msg_id)
);
INSERT INTO messages_002 (device, stream, seq, msg_id, ts, received, payload)
    SELECT device, stream, seq, msg_id, ts, received, payload FROM messages;
DROP TABLE messages;
ALTER TABLE messages_002 RENAME TO messages;
CREATE INDEX messages_stream_ts ON messages (stream, ts);
CREATE INDEX messages_device_stream_ts ON messages (device, stream, ts);
