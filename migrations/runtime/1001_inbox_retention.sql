-- The inbox is pruned by age (INBOX_RETENTION_HOURS). Rows arrive in time order, so a
-- BRIN index finds the old ones for next to nothing on each insert.
-- (The runtime's migrations number 1 and from 1001 on; a service's from 2 to 1000.)
CREATE INDEX inbox_received ON inbox USING brin (received_at);
