-- POST /accounts/{id}/deposits accepts an Idempotency-Key: a retry after a lost answer
-- gets the first deposit back instead of crediting twice. The key lives with the deposit
-- it made (deposits are an audit log, kept as long as the accounts).
ALTER TABLE deposits ADD COLUMN idempotency_key TEXT UNIQUE;
