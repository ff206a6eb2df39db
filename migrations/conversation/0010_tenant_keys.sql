-- Tenant-leading keys. Every primary key, unique constraint and foreign key
-- of a tenant table includes tenant_id, so the tables can be distributed by
-- tenant_id (Citus, deploy/SCALING.md): a distributed table's unique
-- constraints must include the distribution column, and a foreign key
-- between two of them must join on it. tests/tests/tenant_keys.rs checks
-- every table of every schema.
--
-- Ids stay globally unique (UUIDs, identity sequences); only the constraints
-- that promise it are now per tenant. Lookups by id already carry the tenant
-- (row-level security adds it to every query), so the new keys serve them.

ALTER TABLE conversation.messages
    DROP CONSTRAINT messages_reply_to_fkey,
    DROP CONSTRAINT messages_tenant_id_conversation_id_fkey;

ALTER TABLE conversation.conversations
    DROP CONSTRAINT conversations_pkey,
    DROP CONSTRAINT conversations_tenant_id_conversation_id_key,
    DROP CONSTRAINT conversations_list_seq_key,
    ADD PRIMARY KEY (tenant_id, conversation_id),
    ADD UNIQUE (tenant_id, list_seq);

ALTER TABLE conversation.messages
    DROP CONSTRAINT messages_pkey,
    DROP CONSTRAINT messages_seq_key,
    DROP CONSTRAINT messages_reply_to_key,
    DROP CONSTRAINT messages_conversation_id_idempotency_key_key,
    ADD PRIMARY KEY (tenant_id, message_id),
    ADD UNIQUE (tenant_id, seq),
    -- At most one reply per user turn.
    ADD UNIQUE (tenant_id, reply_to),
    ADD UNIQUE (tenant_id, conversation_id, idempotency_key),
    ADD FOREIGN KEY (tenant_id, conversation_id)
        REFERENCES conversation.conversations (tenant_id, conversation_id) ON DELETE CASCADE,
    ADD FOREIGN KEY (tenant_id, reply_to)
        REFERENCES conversation.messages (tenant_id, message_id) ON DELETE CASCADE;
