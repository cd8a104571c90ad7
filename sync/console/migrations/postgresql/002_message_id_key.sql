-- A message is the same message only if its id is the same too: a device whose outbox was
-- replaced starts again at seq 1 with new ids, and those messages must be stored, not dropped
-- as duplicates of the old ones. Re-deliveries (same id) still hit the key and are dropped.
ALTER TABLE messages DROP CONSTRAINT messages_pkey;
ALTER TABLE messages ADD PRIMARY KEY (device, stream, seq, msg_id);
