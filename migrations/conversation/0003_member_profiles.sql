-- The durable part of a member's context profile (role, team size, stage),
-- carried from one conversation to the next; the member can read and clear it.
CREATE TABLE conversation.member_profiles (
    tenant_id   uuid NOT NULL,
    user_id     text NOT NULL CHECK (char_length(user_id) BETWEEN 1 AND 255),
    role        text,
    team_size   integer CHECK (team_size > 0),
    stage       text,
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);

ALTER TABLE conversation.member_profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE conversation.member_profiles FORCE ROW LEVEL SECURITY;
CREATE POLICY member_profiles_select ON conversation.member_profiles FOR SELECT
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE POLICY member_profiles_insert ON conversation.member_profiles FOR INSERT
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE POLICY member_profiles_update ON conversation.member_profiles FOR UPDATE
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE POLICY member_profiles_delete ON conversation.member_profiles FOR DELETE
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

GRANT SELECT, INSERT, UPDATE, DELETE ON conversation.member_profiles TO tp_app;
