-- The console's first schema (PostgreSQL). Times are Unix seconds (device clock for ts, console
-- clock for received); payloads are the devices' JSON, stored as text.

CREATE TABLE devices (
    device TEXT PRIMARY KEY,
    fleet TEXT,
    state TEXT,
    model TEXT,
    version TEXT,
    uptime_s DOUBLE PRECISION,
    status_ts DOUBLE PRECISION,
    last_seen DOUBLE PRECISION,
    status_json TEXT,
    telemetry_ts DOUBLE PRECISION,
    telemetry_json TEXT,
    latency_baseline_ms DOUBLE PRECISION
);

-- Every data message once: QoS 1 re-deliveries hit the primary key and are dropped.
CREATE TABLE messages (
    device TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq BIGINT NOT NULL,
    msg_id TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    received DOUBLE PRECISION NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (device, stream, seq)
);
CREATE INDEX messages_stream_ts ON messages (stream, ts);
CREATE INDEX messages_device_stream_ts ON messages (device, stream, ts);

CREATE TABLE commands (
    cmd_id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    name TEXT NOT NULL,
    args TEXT NOT NULL,
    sent DOUBLE PRECISION NOT NULL
);

-- NULL ids (a device that could not parse the request) are distinct, so each is kept.
CREATE TABLE acks (
    row_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device TEXT NOT NULL,
    cmd_id TEXT,
    name TEXT,
    ok BOOLEAN NOT NULL,
    result TEXT,
    error TEXT,
    ts DOUBLE PRECISION,
    received DOUBLE PRECISION NOT NULL,
    UNIQUE (device, cmd_id)
);

-- Filled from the devices' retained edge/{fleet}/{device}/deployment reports (rollouts).
CREATE TABLE rollouts (
    rollout TEXT NOT NULL,
    device TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT,
    ts DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (rollout, device)
);

CREATE TABLE alerts (
    alert_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device TEXT NOT NULL,
    rule TEXT NOT NULL,
    opened_at DOUBLE PRECISION NOT NULL,
    resolved_at DOUBLE PRECISION,
    value DOUBLE PRECISION,
    threshold DOUBLE PRECISION,
    message TEXT NOT NULL
);
-- At most one open alert per (device, rule), whichever ingest process saw it first.
CREATE UNIQUE INDEX alerts_one_open ON alerts (device, rule) WHERE resolved_at IS NULL;
CREATE INDEX alerts_opened ON alerts (opened_at);
