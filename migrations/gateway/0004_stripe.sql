-- Stripe billing. Where each tenant's seats are billed (written in the
-- transaction that creates the tenant, with what Stripe returned), and the
-- webhook events already applied (Stripe may deliver one more than once).
CREATE TABLE gateway.billing_accounts (
    tenant_id          uuid PRIMARY KEY REFERENCES gateway.tenants (tenant_id) ON DELETE CASCADE,
    provider           text NOT NULL CHECK (provider IN ('stripe')),
    customer_id        text NOT NULL UNIQUE CHECK (char_length(customer_id) BETWEEN 1 AND 255),
    subscription_id    text NOT NULL UNIQUE CHECK (char_length(subscription_id) BETWEEN 1 AND 255),
    item_id            text NOT NULL CHECK (char_length(item_id) BETWEEN 1 AND 255),
    -- When the subscription was last read back from Stripe (a webhook).
    synced_at          timestamptz,
    -- The newest `created` (Unix seconds) of the events applied so far.
    last_event_created bigint
);

CREATE TABLE gateway.billing_events (
    event_id    text PRIMARY KEY CHECK (char_length(event_id) BETWEEN 1 AND 255),
    tenant_id   uuid NOT NULL REFERENCES gateway.tenants (tenant_id) ON DELETE CASCADE,
    event_type  text NOT NULL CHECK (char_length(event_type) BETWEEN 1 AND 255),
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_events_tenant ON gateway.billing_events (tenant_id);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['billing_accounts', 'billing_events'] LOOP
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

-- The account is created with the tenant and re-synced by webhooks; the
-- event log is only ever appended to.
GRANT SELECT, INSERT, UPDATE ON gateway.billing_accounts TO tp_app;
GRANT SELECT, INSERT ON gateway.billing_events TO tp_app;
