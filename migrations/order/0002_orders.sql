-- Orders (SPEC §5.1). Items are immutable once placed, so they live with the order as
-- JSON: one row per order keeps the create transaction to two inserts (order + outbox).
CREATE TABLE orders (
    id             UUID        PRIMARY KEY,
    customer_id    TEXT        NOT NULL CHECK (char_length(customer_id) BETWEEN 1 AND 64),
    items          JSONB       NOT NULL,
    total_cents    BIGINT      NOT NULL CHECK (total_cents >= 0),
    currency       TEXT        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status         TEXT        NOT NULL DEFAULT 'PENDING'
                   CHECK (status IN ('PENDING', 'PAID', 'PAYMENT_FAILED', 'CANCELLED')),
    payment_id     UUID,
    failure_reason TEXT,
    refunded_at    TIMESTAMPTZ,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The reconciler's scan: orders still waiting for payment.
CREATE INDEX orders_pending ON orders (created_at) WHERE status = 'PENDING';

-- Keyset pagination of GET /orders, by customer or by status.
CREATE INDEX orders_customer ON orders (customer_id, id);
CREATE INDEX orders_status ON orders (status, id);

-- Idempotency-Key of POST /orders: the first request's body and the order it created.
-- A repeat with the same body gets that order back; another body is refused.
CREATE TABLE idempotency_keys (
    key        TEXT        PRIMARY KEY,
    request    JSONB       NOT NULL,
    order_id   UUID        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
