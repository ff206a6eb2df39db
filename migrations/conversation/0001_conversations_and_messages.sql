-- Conversations and their transcripts. A conversation belongs to one member
-- of one tenant; messages carry the tenant too, so row-level security never
-- needs a join.

CREATE TABLE conversation.conversations (
    conversation_id uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL,
    user_id         text NOT NULL CHECK (char_length(user_id) BETWEEN 1 AND 255),
    title           text NOT NULL DEFAULT '' CHECK (char_length(title) <= 200),
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now(),
    -- Creation order, for stable pagination (newest first).
    list_seq        bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    UNIQUE (tenant_id, conversation_id)
);
CREATE INDEX conversations_by_owner ON conversation.conversations (tenant_id, user_id, list_seq DESC);

CREATE TABLE conversation.messages (
    message_id      uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL,
    conversation_id uuid NOT NULL,
    -- Transcript order.
    seq             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    role            text NOT NULL CHECK (role IN ('user', 'assistant')),
    content         text NOT NULL,
    -- Set on user turns sent with a key; a retry finds the stored exchange.
    idempotency_key text CHECK (char_length(idempotency_key) BETWEEN 1 AND 128),
    -- Set on assistant turns: the user turn they answer (at most one reply each).
    reply_to        uuid UNIQUE REFERENCES conversation.messages (message_id) ON DELETE CASCADE,
    -- Which responder wrote an assistant turn (e.g. "offline").
    responder       text,
    create_time     timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, conversation_id)
        REFERENCES conversation.conversations (tenant_id, conversation_id) ON DELETE CASCADE,
    UNIQUE (conversation_id, idempotency_key),
    CHECK ((role = 'assistant') = (reply_to IS NOT NULL))
);
CREATE INDEX messages_by_conversation ON conversation.messages (conversation_id, seq);

-- Row-level security keyed on the request's tenant. A missing or empty
-- app.tenant_id makes every predicate NULL, so access fails closed.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['conversations', 'messages'] LOOP
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

GRANT USAGE ON SCHEMA conversation TO tp_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON conversation.conversations, conversation.messages TO tp_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA conversation TO tp_app;
