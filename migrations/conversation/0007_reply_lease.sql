-- Which call is writing the reply to a user turn, and until when. A retry
-- with the same idempotency key that finds the turn without a reply and
-- the lease unexpired waits for that reply instead of writing a second
-- one; a call that cannot finish (the provider failed, the client left)
-- clears it so the next retry writes the reply at once.
ALTER TABLE conversation.messages ADD COLUMN reply_lease_until timestamptz;
