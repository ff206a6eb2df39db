-- Tenant-leading keys, so documents and passages can be distributed by
-- tenant_id (Citus, deploy/SCALING.md; see conversation's 0010 for why).
-- Checked for every table by tests/tests/tenant_keys.rs.

ALTER TABLE knowledge.passages
    DROP CONSTRAINT passages_tenant_id_document_id_fkey,
    DROP CONSTRAINT passages_pkey;

ALTER TABLE knowledge.documents
    DROP CONSTRAINT documents_pkey,
    DROP CONSTRAINT documents_tenant_id_document_id_key,
    DROP CONSTRAINT documents_list_seq_key,
    ADD PRIMARY KEY (tenant_id, document_id),
    ADD UNIQUE (tenant_id, list_seq);

ALTER TABLE knowledge.passages
    ADD PRIMARY KEY (tenant_id, document_id, ordinal),
    ADD FOREIGN KEY (tenant_id, document_id)
        REFERENCES knowledge.documents (tenant_id, document_id) ON DELETE CASCADE;
