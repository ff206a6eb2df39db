-- Every message of a tenant was counted into one row per day, so all of a
-- tenant's members sending at once queued on that row's lock until each
-- commit (tp-loadgen: one tenant's 32 members sent up to 37 % less than
-- 1,000 tenants' members did, and fell further as the row bloated). The
-- day's count is now spread over 8 rows, picked by member, and read as
-- their sum (readers already sum over days).

-- Which of a tenant's 8 rows for a day a member's usage is counted in: the
-- one place the rule is written (an immutable SQL function, inlined).
CREATE FUNCTION conversation.usage_shard(user_id text) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (hashtext(user_id) & 7)::smallint;

ALTER TABLE conversation.tenant_token_usage
    ADD COLUMN shard smallint NOT NULL DEFAULT 0 CHECK (shard BETWEEN 0 AND 7);
ALTER TABLE conversation.tenant_token_usage DROP CONSTRAINT tenant_token_usage_pkey;
ALTER TABLE conversation.tenant_token_usage ADD PRIMARY KEY (tenant_id, day, shard);
