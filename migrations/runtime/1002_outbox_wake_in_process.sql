-- The relay is woken in-process by the code that committed its rows, no longer by a
-- NOTIFY trigger: Postgres serialises the commits of every transaction that notified
-- (a global lock held across the commit), which capped group commit at about half of
-- what the box can do. A 1 s poll remains the safety net (rows of a process that died).
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();
