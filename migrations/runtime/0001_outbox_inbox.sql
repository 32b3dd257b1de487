-- Transactional outbox (SPEC §4.1) and inbox (SPEC §4.2), owned by service-runtime.

-- Events committed with the change they describe, waiting for the relay to XADD them.
CREATE TABLE outbox (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     UUID        NOT NULL UNIQUE,
    stream       TEXT        NOT NULL,          -- logical stream, before the namespace
    event_type   TEXT        NOT NULL,
    order_id     UUID        NOT NULL,
    fields       TEXT[]      NOT NULL,          -- the entry's field list: name, value, name, value...
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);

-- The relay's queue: only unpublished rows, oldest first.
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_order ON outbox (order_id);

-- Wake the relay once per inserting statement; delivered at commit, dropped on rollback.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Every event this service applied, written in the same transaction as its effect.
CREATE TABLE inbox (
    event_id    UUID        PRIMARY KEY,
    event_type  TEXT        NOT NULL,
    order_id    UUID        NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
