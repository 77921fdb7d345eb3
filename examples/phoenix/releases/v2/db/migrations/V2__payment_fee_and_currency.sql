-- Phoenix 2.0.0: payments get a fee, transfers a currency.
--
-- Expand only: two new columns with constant defaults. On PostgreSQL 11 and newer that
-- is a change of the catalog alone (no table rewrite, the lock is held for milliseconds),
-- and 1.0.0 code keeps working on the new schema because it names its columns in every
-- INSERT and SELECT, and the defaults fill in what it does not write.

ALTER TABLE payments ADD COLUMN fee bigint NOT NULL DEFAULT 0;

ALTER TABLE transactions ADD COLUMN currency text NOT NULL DEFAULT 'EUR';
