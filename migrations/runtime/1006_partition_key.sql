-- Outbox and inbox rows carry the partition key their service chose
-- (`EventHandler::partition_key` for what it consumes, `OutboxRow::keyed_by` for what it
-- writes; the order id, as text, unless the service says otherwise): the key
-- `outbox::republish` finds a row's events by, so a service whose events are not keyed
-- by order (or by order alone) keeps its own. `order_id` stays: it is the envelope's,
-- and a build of the previous release, still running during a rolling upgrade, reads it.
-- Rows written before this migration have no partition key: they are their order's
-- (`republish` looks them up by `order_id`), and the sweeper removes them within
-- OUTBOX_RETENTION_HOURS / INBOX_RETENTION_HOURS. Metadata-only: no table rewrite.
ALTER TABLE outbox ADD COLUMN partition_key TEXT;
ALTER TABLE inbox ADD COLUMN partition_key TEXT;
CREATE INDEX outbox_partition ON outbox (partition_key);
