-- Tenant-leading keys, so the gateway's tenant tables can be distributed by
-- tenant_id (Citus, deploy/SCALING.md; see conversation's 0010 for why).
-- Checked for every table by tests/tests/tenant_keys.rs.

ALTER TABLE gateway.members
    DROP CONSTRAINT members_join_seq_key,
    ADD UNIQUE (tenant_id, join_seq);

-- A Stripe event belongs to one tenant's subscription: it is deduplicated
-- within that tenant (the webhook resolves the tenant before recording it).
ALTER TABLE gateway.billing_events
    DROP CONSTRAINT billing_events_pkey,
    ADD PRIMARY KEY (tenant_id, event_id);

-- One Stripe customer and subscription per tenant is the primary key's
-- promise (tenant_id). Global uniqueness of Stripe's ids cannot be kept by a
-- table distributed by tenant, and nothing relies on it: a webhook acts on
-- the tenant its subscription names only if that tenant's account holds the
-- same customer and subscription ids.
ALTER TABLE gateway.billing_accounts
    DROP CONSTRAINT billing_accounts_customer_id_key,
    DROP CONSTRAINT billing_accounts_subscription_id_key;
