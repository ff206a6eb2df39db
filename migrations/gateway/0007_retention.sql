-- How long an organisation keeps its conversations (SettingsService):
-- NULL keeps them forever; otherwise 7 to 3650 days after the last turn.
ALTER TABLE gateway.tenants
    ADD COLUMN retention_days integer CHECK (retention_days BETWEEN 7 AND 3650);

-- The retention sweep must find every organisation with a retention, which
-- row-level security (one tenant per transaction) would hide. This policy
-- admits exactly that read: SELECT on gateway.tenants, only in a
-- transaction where tp_store set app.sweep to 'retention' (only
-- `tp_store::begin_retention_sweep_tx` does), and only rows that have a
-- retention. No other table and no write gains anything from it.
CREATE POLICY tenants_retention_sweep ON gateway.tenants FOR SELECT
    USING (current_setting('app.sweep', true) = 'retention' AND retention_days IS NOT NULL);
