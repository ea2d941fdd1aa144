-- A queued row's max_attempts is NULL unless its producer chose one: the dispatcher then applies
-- PARLEY_SEND_MAX_ATTEMPTS, read when the row is attempted, so changing the setting takes effect for
-- what is already waiting (a constant default of 5 stamped at insert made the setting a dead letter).
ALTER TABLE message_queue ALTER COLUMN max_attempts DROP NOT NULL, ALTER COLUMN max_attempts DROP DEFAULT;
UPDATE message_queue SET max_attempts = NULL WHERE max_attempts = 5;
