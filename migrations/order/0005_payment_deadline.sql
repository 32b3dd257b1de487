-- The payment deadline (SPEC §3.4, schema_version 2): an order not paid by `pay_by` is
-- expired: moved to PAYMENT_FAILED (payment_expired) and its payment cancelled, so a
-- charge that raced the deadline is refunded. Orders placed before have no deadline.
ALTER TABLE orders ADD COLUMN pay_by TIMESTAMPTZ;
-- When order-service expired the order and asked payment-service to cancel its payment;
-- like a user's cancellation, it is asked again until payment-service confirms it.
ALTER TABLE orders ADD COLUMN expired_at TIMESTAMPTZ;

-- The expirer's scan: unpaid orders by deadline.
CREATE INDEX orders_pay_by ON orders (pay_by) WHERE status = 'PENDING' AND pay_by IS NOT NULL;

-- The reconciler's scan of cancellations waiting for their answer now includes those of
-- expired orders.
DROP INDEX orders_unconfirmed_cancellation;
CREATE INDEX orders_unconfirmed_cancellation ON orders (updated_at)
    WHERE (status = 'CANCELLED' OR expired_at IS NOT NULL) AND cancellation_confirmed_at IS NULL;
