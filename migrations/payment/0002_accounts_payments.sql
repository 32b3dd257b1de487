-- Accounts and payments (SPEC §5.2).

-- One account per customer, opened on first use (an order or a deposit) with
-- INITIAL_CREDIT_CENTS; its currency is that of the first order. The balance can never
-- go negative, nor past 10^15 (no overflow from deposits).
CREATE TABLE accounts (
    customer_id   TEXT        PRIMARY KEY,
    balance_cents BIGINT      NOT NULL CONSTRAINT balance_in_range
                              CHECK (balance_cents BETWEEN 0 AND 1000000000000000),
    currency      TEXT        CHECK (currency ~ '^[A-Z]{3}$'),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- At most one payment per order, enforced by the database.
CREATE TABLE payments (
    id           UUID        PRIMARY KEY,
    order_id     UUID        NOT NULL UNIQUE,
    customer_id  TEXT        NOT NULL REFERENCES accounts (customer_id),
    amount_cents BIGINT      NOT NULL CHECK (amount_cents >= 0),
    currency     TEXT        NOT NULL,
    status       TEXT        NOT NULL DEFAULT 'COMPLETED' CHECK (status IN ('COMPLETED', 'REFUNDED')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    refunded_at  TIMESTAMPTZ
);
CREATE INDEX payments_customer ON payments (customer_id);

-- What payment-service decided for each order it has seen: the saga's state on this
-- side. A handler first claims the order's row (inserted as NEW if unseen) and holds its
-- lock to the end of the transaction, so OrderCreated and OrderCancelled of one order are
-- serialised in any arrival order. NEW never outlives the transaction that claimed it.
CREATE TABLE order_payments (
    order_id    UUID        PRIMARY KEY,
    customer_id TEXT        NOT NULL,
    state       TEXT        NOT NULL CHECK (state IN ('NEW', 'PAID', 'DECLINED', 'CANCELLED', 'REFUNDED')),
    payment_id  UUID        REFERENCES payments (id),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Money added by an operator (POST /accounts/{customer_id}/deposits).
CREATE TABLE deposits (
    id           UUID        PRIMARY KEY,
    customer_id  TEXT        NOT NULL REFERENCES accounts (customer_id),
    amount_cents BIGINT      NOT NULL CHECK (amount_cents > 0),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
