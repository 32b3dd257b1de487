-- When an entry was queued, so the relay's poll finds the rows it may claim (waiting longer
-- than its writer needs to publish them) in `outbox_pending` alone. Joined to `outbox` for
-- that, the planner walked the outbox in id order, which grows with OUTBOX_RETENTION_HOURS:
-- the poll's cost rose with every event kept, until a 10-minute soak fell behind.
ALTER TABLE outbox_pending ADD COLUMN queued_at TIMESTAMPTZ NOT NULL DEFAULT now();
