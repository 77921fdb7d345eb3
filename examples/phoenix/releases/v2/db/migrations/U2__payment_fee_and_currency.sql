-- Undo of V2: drop the columns 2.0.0 added.
--
-- Run it only once no 2.0.0 (or later) process is left: those read and write these
-- columns, 1.0.0 never does. The fees and currencies stored in them are lost.

-- airlock:ignore lint.breaking-change only 1.0.0 runs during this undo, and it never uses the column
ALTER TABLE transactions DROP COLUMN currency;

-- airlock:ignore lint.breaking-change only 1.0.0 runs during this undo, and it never uses the column
ALTER TABLE payments DROP COLUMN fee;
