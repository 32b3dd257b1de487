-- No statement reads payments by customer: the index served the foreign key to accounts,
-- dropped in 0004, and now only cost an entry per payment.
DROP INDEX payments_customer;
