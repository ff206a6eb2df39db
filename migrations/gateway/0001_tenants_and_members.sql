-- Tenants (subscribing organisations) and their members. Every member holds
-- one seat; the gateway never lets members outnumber seats.

CREATE TABLE gateway.tenants (
    tenant_id    uuid PRIMARY KEY,
    display_name text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 200),
    seats        integer NOT NULL CHECK (seats BETWEEN 1 AND 100000),
    create_time  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gateway.members (
    tenant_id   uuid NOT NULL REFERENCES gateway.tenants (tenant_id) ON DELETE CASCADE,
    user_id     text NOT NULL CHECK (char_length(user_id) BETWEEN 1 AND 255),
    role        text NOT NULL CHECK (role IN ('member', 'admin')),
    create_time timestamptz NOT NULL DEFAULT now(),
    -- Join order, for stable pagination.
    join_seq    bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    PRIMARY KEY (tenant_id, user_id)
);

-- Row-level security keyed on the request's tenant. A missing or empty
-- app.tenant_id makes every predicate NULL, so access fails closed.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'members'] LOOP
        EXECUTE format('ALTER TABLE gateway.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE gateway.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY %1$s_select ON gateway.%1$I FOR SELECT
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
        EXECUTE format($p$CREATE POLICY %1$s_insert ON gateway.%1$I FOR INSERT
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
        EXECUTE format($p$CREATE POLICY %1$s_update ON gateway.%1$I FOR UPDATE
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
        EXECUTE format($p$CREATE POLICY %1$s_delete ON gateway.%1$I FOR DELETE
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA gateway TO tp_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON gateway.tenants, gateway.members TO tp_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA gateway TO tp_app;
