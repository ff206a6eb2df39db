-- The organisation's own settings (SettingsService). On the tenant row, so
-- the gateway's cached standing carries them and the tenants_changed
-- trigger tells every gateway the moment they change.
ALTER TABLE gateway.tenants
    -- Tenant admins may search every member's transcripts
    -- (SearchMessages, SEARCH_SCOPE_ORGANISATION). Off by default: members'
    -- conversations are private to them unless the organisation decides.
    ADD COLUMN admins_can_search_all_transcripts boolean NOT NULL DEFAULT false,
    ADD COLUMN settings_update_time timestamptz;
