-- A tenant's standing and plan, and when its monthly billing periods start.
ALTER TABLE gateway.tenants
    ADD COLUMN status text NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'past_due', 'suspended', 'cancelled')),
    ADD COLUMN status_reason text NOT NULL DEFAULT ''
        CHECK (char_length(status_reason) <= 500),
    ADD COLUMN plan text NOT NULL DEFAULT 'standard'
        CHECK (char_length(plan) BETWEEN 1 AND 64),
    ADD COLUMN billing_anchor timestamptz NOT NULL DEFAULT now();
-- Backfills below read every tenant: row-level security binds the owner
-- too (FORCE), so it is lifted for the length of this migration only.
ALTER TABLE gateway.tenants NO FORCE ROW LEVEL SECURITY;
UPDATE gateway.tenants SET billing_anchor = create_time;

-- Gateways cache a tenant's standing beside its memberships: a change to a
-- tenant tells every gateway to forget it (payload: the tenant id alone).
CREATE FUNCTION gateway.notify_tenant_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gateway_membership', OLD.tenant_id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_changed
    AFTER UPDATE OR DELETE ON gateway.tenants
    FOR EACH ROW EXECUTE FUNCTION gateway.notify_tenant_changed();

-- Every seat count a tenant has had, from when: the local billing ledger
-- that invoices are prorated from.
CREATE TABLE gateway.seat_changes (
    tenant_id    uuid NOT NULL REFERENCES gateway.tenants (tenant_id) ON DELETE CASCADE,
    change_seq   bigint GENERATED ALWAYS AS IDENTITY,
    effective_at timestamptz NOT NULL DEFAULT now(),
    seats        integer NOT NULL CHECK (seats BETWEEN 0 AND 100000),
    PRIMARY KEY (tenant_id, change_seq)
);
INSERT INTO gateway.seat_changes (tenant_id, effective_at, seats)
    SELECT tenant_id, create_time, seats FROM gateway.tenants;
ALTER TABLE gateway.tenants FORCE ROW LEVEL SECURITY;

-- The append-only audit log of admin and billing actions. The application
-- role may insert and read, never update or delete: there are no grants
-- and no policies for either.
CREATE TABLE gateway.audit_events (
    tenant_id  uuid NOT NULL REFERENCES gateway.tenants (tenant_id) ON DELETE CASCADE,
    event_seq  bigint GENERATED ALWAYS AS IDENTITY,
    event_time timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL CHECK (char_length(actor) BETWEEN 1 AND 300),
    action     text NOT NULL CHECK (action ~ '^[a-z_]+\.[a-z_]+$'),
    target     text NOT NULL DEFAULT '',
    before     jsonb,
    after      jsonb,
    PRIMARY KEY (tenant_id, event_seq)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['seat_changes', 'audit_events'] LOOP
        EXECUTE format('ALTER TABLE gateway.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE gateway.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY %1$s_select ON gateway.%1$I FOR SELECT
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
        EXECUTE format($p$CREATE POLICY %1$s_insert ON gateway.%1$I FOR INSERT
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT ON gateway.seat_changes, gateway.audit_events TO tp_app;
