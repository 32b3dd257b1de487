-- payment-service answers every OrderCancelled (PaymentRefunded, or PaymentCancelled when
-- nothing was charged); order-service records when that answer arrived and re-publishes
-- the OrderCancelled of a cancelled order until it does (SPEC §4.6).
ALTER TABLE orders ADD COLUMN cancellation_confirmed_at TIMESTAMPTZ;

-- Orders cancelled before cancellations were answered are taken as settled: the services
-- that handled them answered nothing, so asking again would never be answered either.
UPDATE orders SET cancellation_confirmed_at = updated_at WHERE status = 'CANCELLED';

-- The reconciler's scan: cancellations still waiting for their answer.
CREATE INDEX orders_unconfirmed_cancellation ON orders (updated_at)
    WHERE status = 'CANCELLED' AND cancellation_confirmed_at IS NULL;
