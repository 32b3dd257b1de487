-- Each outbox row keeps its own re-ask schedule (SPEC §4.9): how often it was queued
-- again, and when it may be next. Both are metadata-only additions (no table rewrite).
ALTER TABLE outbox
    ADD COLUMN rearms integer NOT NULL DEFAULT 0,
    ADD COLUMN next_rearm_at timestamptz;
