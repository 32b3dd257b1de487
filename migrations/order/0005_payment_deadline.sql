-- The payment deadline (SPEC §3.4, schema_version 2): an order not paid by `pay_by`
-- expires: PAYMENT_FAILED (payment_expired), and its payment is cancelled, so a charge that
-- raced the deadline is refunded. Orders placed before have no row here: no deadline.
--
-- A table of its own, not columns of `orders`: replicas of the previous release, still
-- running during a rolling upgrade, read orders with `SELECT *` from prepared statements,
-- and a column added under them breaks every one of those ("cached plan must not change
-- result type") until they restart.
CREATE TABLE order_deadlines (
    order_id UUID        PRIMARY KEY,
    pay_by   TIMESTAMPTZ NOT NULL,
    -- The expirer saw the deadline pass (and expired the order if it was still PENDING):
    -- the index below holds only deadlines still to come, so it stays small.
    passed   BOOLEAN     NOT NULL DEFAULT false
);
CREATE INDEX order_deadlines_due ON order_deadlines (pay_by) WHERE NOT passed;

-- The reconciler's scan of cancellations waiting for their answer includes those of
-- expired orders, whose payment is cancelled too.
DROP INDEX orders_unconfirmed_cancellation;
CREATE INDEX orders_unconfirmed_cancellation ON orders (updated_at)
    WHERE (status = 'CANCELLED' OR failure_reason = 'payment_expired')
      AND cancellation_confirmed_at IS NULL;
