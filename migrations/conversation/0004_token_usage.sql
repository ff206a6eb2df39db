-- Tokens a model provider reported for each assistant turn (NULL for the
-- offline coach), and the running total per tenant and day.
ALTER TABLE conversation.messages
    ADD COLUMN input_tokens integer CHECK (input_tokens >= 0),
    ADD COLUMN output_tokens integer CHECK (output_tokens >= 0);

CREATE TABLE conversation.tenant_token_usage (
    tenant_id     uuid NOT NULL,
    day           date NOT NULL,
    input_tokens  bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day)
);

ALTER TABLE conversation.tenant_token_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE conversation.tenant_token_usage FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_token_usage_select ON conversation.tenant_token_usage FOR SELECT
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE POLICY tenant_token_usage_insert ON conversation.tenant_token_usage FOR INSERT
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE POLICY tenant_token_usage_update ON conversation.tenant_token_usage FOR UPDATE
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE POLICY tenant_token_usage_delete ON conversation.tenant_token_usage FOR DELETE
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

GRANT SELECT, INSERT, UPDATE ON conversation.tenant_token_usage TO tp_app;
