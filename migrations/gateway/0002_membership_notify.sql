-- Gateways cache who is a member of which tenant for a few seconds. Any
-- change to or removal of a membership, however it is made (the API, an
-- operator's SQL, a tenant's deletion cascading), tells every gateway to
-- forget it. NOTIFY is delivered when the transaction commits, never before.
CREATE FUNCTION gateway.notify_membership_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gateway_membership', OLD.tenant_id::text || '/' || OLD.user_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER members_changed
    AFTER UPDATE OR DELETE ON gateway.members
    FOR EACH ROW EXECUTE FUNCTION gateway.notify_membership_changed();
