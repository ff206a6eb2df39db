-- Usage per member and day, and messages per tenant and day, kept in the
-- same transaction as the turns they count, so quota checks and usage
-- reports read a few rows (one per day) instead of counting messages. Days
-- are UTC dates.
ALTER TABLE conversation.tenant_token_usage
    ADD COLUMN messages bigint NOT NULL DEFAULT 0 CHECK (messages >= 0);

CREATE TABLE conversation.member_usage (
    tenant_id     uuid NOT NULL,
    user_id       text NOT NULL CHECK (char_length(user_id) BETWEEN 1 AND 255),
    day           date NOT NULL,
    messages      bigint NOT NULL DEFAULT 0 CHECK (messages >= 0),
    input_tokens  bigint NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens bigint NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    PRIMARY KEY (tenant_id, user_id, day)
);

-- Monthly quotas: user_id '' is the organisation's. 0 means unlimited.
CREATE TABLE conversation.quotas (
    tenant_id        uuid NOT NULL,
    user_id          text NOT NULL CHECK (char_length(user_id) <= 255),
    monthly_messages bigint NOT NULL DEFAULT 0 CHECK (monthly_messages >= 0),
    monthly_tokens   bigint NOT NULL DEFAULT 0 CHECK (monthly_tokens >= 0),
    update_time      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);

-- Backfill from the turns already stored. Row-level security binds the
-- owner too (FORCE), so it is lifted for this migration only.
ALTER TABLE conversation.messages NO FORCE ROW LEVEL SECURITY;
ALTER TABLE conversation.conversations NO FORCE ROW LEVEL SECURITY;
ALTER TABLE conversation.tenant_token_usage NO FORCE ROW LEVEL SECURITY;
INSERT INTO conversation.member_usage AS u (tenant_id, user_id, day, messages, input_tokens, output_tokens)
    SELECT c.tenant_id, c.user_id, (m.create_time AT TIME ZONE 'UTC')::date,
           count(*) FILTER (WHERE m.role = 'user'),
           coalesce(sum(m.input_tokens), 0), coalesce(sum(m.output_tokens), 0)
      FROM conversation.messages m
      JOIN conversation.conversations c USING (tenant_id, conversation_id)
     GROUP BY 1, 2, 3;
INSERT INTO conversation.tenant_token_usage AS t (tenant_id, day, messages)
    SELECT tenant_id, day, sum(messages) FROM conversation.member_usage GROUP BY 1, 2
    ON CONFLICT (tenant_id, day) DO UPDATE SET messages = EXCLUDED.messages;
ALTER TABLE conversation.messages FORCE ROW LEVEL SECURITY;
ALTER TABLE conversation.conversations FORCE ROW LEVEL SECURITY;
ALTER TABLE conversation.tenant_token_usage FORCE ROW LEVEL SECURITY;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['member_usage', 'quotas'] LOOP
        EXECUTE format('ALTER TABLE conversation.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE conversation.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY %1$s_select ON conversation.%1$I FOR SELECT
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
        EXECUTE format($p$CREATE POLICY %1$s_insert ON conversation.%1$I FOR INSERT
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
        EXECUTE format($p$CREATE POLICY %1$s_update ON conversation.%1$I FOR UPDATE
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
        EXECUTE format($p$CREATE POLICY %1$s_delete ON conversation.%1$I FOR DELETE
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE ON conversation.member_usage TO tp_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON conversation.quotas TO tp_app;
