-- The settle statement (payments, balances and saga states of a batch, in one statement)
-- spent about 40 % of its time in two foreign-key checks, one query per row each: a
-- payment's account, and a saga row's payment. Both rows are written by that very
-- transaction: the account is opened and locked before the payments are inserted, and
-- the saga row takes the id of a payment inserted by the same statement. The invariants
-- the checks guarded are those the end-to-end tests assert after every fault (every
-- standing payment belongs to a PAID order of its customer, balances add up).
ALTER TABLE payments DROP CONSTRAINT payments_customer_id_fkey;
ALTER TABLE order_payments DROP CONSTRAINT order_payments_payment_id_fkey;
