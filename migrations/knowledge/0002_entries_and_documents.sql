-- The corpus moves from a seeded table to versioned Markdown files under
-- services/knowledge/corpus/, loaded by `knowledge migrate` as the owner.
DROP TABLE knowledge.frameworks;

-- Built-in entries (frameworks, topics, sources): shared by every tenant,
-- readable by the application role, writable only by the schema owner.
CREATE TABLE knowledge.entries (
    entry_id            text PRIMARY KEY CHECK (entry_id ~ '^[a-z0-9-]+$'),
    kind                text NOT NULL CHECK (kind IN ('framework', 'topic', 'source')),
    title               text NOT NULL,
    author              text NOT NULL,
    summary             text NOT NULL,
    -- Markdown, without the front matter.
    body                text NOT NULL,
    url                 text NOT NULL,
    source_type         text NOT NULL,
    keywords            text[] NOT NULL,
    -- Ids of cited source entries and linked framework entries.
    sources             text[] NOT NULL,
    frameworks          text[] NOT NULL,
    diagnostic_question text NOT NULL,
    -- Title and keywords weigh most (A), then the summary (B), then the body (C).
    search              tsvector NOT NULL
);
CREATE INDEX entries_search ON knowledge.entries USING gin (search);
GRANT SELECT ON knowledge.entries TO tp_app;

-- Tenant documents and the passages they are split into for search.
CREATE TABLE knowledge.documents (
    document_id  uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    title        text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    content_type text NOT NULL CHECK (content_type IN ('markdown', 'text')),
    content      text NOT NULL CHECK (octet_length(content) BETWEEN 1 AND 1048576),
    created_by   text NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    -- Creation order, for stable pagination.
    list_seq     bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    UNIQUE (tenant_id, document_id)
);
CREATE INDEX documents_by_tenant ON knowledge.documents (tenant_id, list_seq);

CREATE TABLE knowledge.passages (
    tenant_id   uuid NOT NULL,
    document_id uuid NOT NULL,
    ordinal     integer NOT NULL CHECK (ordinal >= 0),
    -- The nearest heading above the passage ('' when none).
    heading     text NOT NULL,
    text        text NOT NULL,
    -- Heading weighs over text, as titles do over bodies for entries.
    search      tsvector NOT NULL,
    PRIMARY KEY (document_id, ordinal),
    FOREIGN KEY (tenant_id, document_id)
        REFERENCES knowledge.documents (tenant_id, document_id) ON DELETE CASCADE
);
CREATE INDEX passages_search ON knowledge.passages USING gin (search);
CREATE INDEX passages_by_tenant ON knowledge.passages (tenant_id);

-- Row-level security keyed on the request's tenant. A missing or empty
-- app.tenant_id makes every predicate NULL, so access fails closed.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['documents', 'passages'] LOOP
        EXECUTE format('ALTER TABLE knowledge.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE knowledge.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY %1$s_select ON knowledge.%1$I FOR SELECT
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
        EXECUTE format($p$CREATE POLICY %1$s_insert ON knowledge.%1$I FOR INSERT
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
        EXECUTE format($p$CREATE POLICY %1$s_update ON knowledge.%1$I FOR UPDATE
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
        EXECUTE format($p$CREATE POLICY %1$s_delete ON knowledge.%1$I FOR DELETE
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, DELETE ON knowledge.documents, knowledge.passages TO tp_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA knowledge TO tp_app;
