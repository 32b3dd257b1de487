-- One row per order this service heard of: a shipment being prepared once the order is
-- paid, or a cancelled one once the order was cancelled or its payment refunded (which
-- may be heard before the payment: the two streams are read independently). The order
-- is the key, so a second `PaymentCompleted` can never make a second shipment.
-- Bounded like `orders`: one row per order, the business record, kept (archive it with
-- the orders if a deployment must).
CREATE TABLE shipments (
    order_id     UUID        PRIMARY KEY,
    customer_id  TEXT        NOT NULL,
    payment_id   UUID,
    status       TEXT        NOT NULL CHECK (status IN ('PREPARING', 'CANCELLED')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    cancelled_at TIMESTAMPTZ
);
