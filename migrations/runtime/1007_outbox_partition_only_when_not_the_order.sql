-- An outbox row keyed by its own order (every row order-service and payment-service
-- write) stores no partition key: NULL, the order's, as rows written before 1006, which
-- `outbox::republish` finds by `order_id` (index `outbox_order`). So `outbox_partition`
-- only holds rows keyed otherwise (a service's own keys, `OutboxRow::keyed_by`), and an
-- event keyed by its order costs no second index entry with the same content as its
-- `outbox_order` entry (2 WAL records per order, and their index upkeep, measured in
-- docs/performance.md). Rows written by 1006's builds keep their key and stay findable by
-- it. The index is rebuilt from the outbox (bounded by OUTBOX_RETENTION_HOURS).
DROP INDEX outbox_partition;
CREATE INDEX outbox_partition ON outbox (partition_key) WHERE partition_key IS NOT NULL;
