-- Which call holds a user turn's reply lease. The holder renews the lease
-- while it writes the reply, so the lease can be short: when the process
-- writing it dies, a retry takes over within one lease, not minutes. Only
-- the holder renews or releases it: a call whose lease ran out and was
-- taken over does not take it back.
ALTER TABLE conversation.messages ADD COLUMN reply_lease_holder uuid;
