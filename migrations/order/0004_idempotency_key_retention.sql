-- Idempotency keys are kept IDEMPOTENCY_KEY_RETENTION_HOURS, then pruned oldest first.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
