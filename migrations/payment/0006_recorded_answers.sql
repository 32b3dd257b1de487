-- Each saga row records the answers it gave (SPEC §4.9): the event_id of the answer to the
-- order's OrderCreated and of the answer to its OrderCancelled, and why it was not charged
-- when that answer was PaymentFailed. A question asked again is answered from this record
-- (with the payment), same event_id, however long ago the outbox sweeper deleted the
-- original row (OUTBOX_RETENTION_HOURS): no retention can leave a question unanswered.
ALTER TABLE order_payments
    ADD COLUMN created_answer_id   UUID,
    ADD COLUMN cancelled_answer_id UUID,
    ADD COLUMN decline_reason      TEXT;

-- Rows settled before: their answers, as the outbox still holds them...
UPDATE order_payments o
SET created_answer_id = x.event_id,
    decline_reason = CASE WHEN x.event_type = 'PaymentFailed'
                          THEN (x.fields[array_position(x.fields, 'payload') + 1])::jsonb ->> 'reason'
                     END
FROM outbox x
WHERE x.order_id = o.order_id AND x.event_type IN ('PaymentCompleted', 'PaymentFailed');

UPDATE order_payments o
SET cancelled_answer_id = x.event_id
FROM outbox x
WHERE x.order_id = o.order_id AND x.event_type IN ('PaymentRefunded', 'PaymentCancelled');

-- ...or, where it was swept long ago (the answer was heard then), a new id, and a decline
-- reason that says it was not kept.
UPDATE order_payments SET created_answer_id = gen_random_uuid()
WHERE created_answer_id IS NULL AND state IN ('PAID', 'DECLINED', 'REFUNDED');
UPDATE order_payments SET cancelled_answer_id = gen_random_uuid()
WHERE cancelled_answer_id IS NULL AND state IN ('CANCELLED', 'REFUNDED');
UPDATE order_payments SET decline_reason = 'unrecorded'
WHERE decline_reason IS NULL AND state = 'DECLINED';

-- A decided order always has the answers its state implies.
ALTER TABLE order_payments ADD CONSTRAINT answers_recorded CHECK (
    (state NOT IN ('PAID', 'DECLINED', 'REFUNDED') OR created_answer_id IS NOT NULL)
    AND (state NOT IN ('CANCELLED', 'REFUNDED') OR cancelled_answer_id IS NOT NULL)
    AND (state <> 'DECLINED' OR decline_reason IS NOT NULL)
);
