-- One outbox row's field list as a statement binds it (`outbox::bind_outbox_rows`): the
-- rows of one statement travel as arrays, one element per row, and Postgres arrays of
-- arrays must be rectangular, while field lists differ in length. Until now each list
-- travelled as the text of a JSON array, parsed back into a `text[]` per row
-- (`ARRAY(SELECT jsonb_array_elements_text(fields::jsonb))`): about 6 µs of Postgres's CPU
-- per event, two events per order (docs/performance.md). A composite holding the
-- `text[]` travels in binary, and `unnest` of an array of them gives back each `text[]`.
-- Additive: builds before this one still send JSON text and need nothing of it.
CREATE TYPE outbox_field_list AS (list TEXT[]);
