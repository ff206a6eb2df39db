-- Branching transcripts (EditMessage, RegenerateReply). Nothing is
-- overwritten: an edited turn is a new sibling of the turn it replaces, a
-- regenerated reply a new sibling of the reply, so a transcript is a tree.
-- What a member reads, and what the coach is given as context, is one path
-- through it: a branch, named by the last message on it.
--
-- * parent_id: the message this one follows (NULL for a first turn). A
--   reply's parent is the turn it answers.
-- * branch_id, depth: a branch is stored as a chain of linear segments. A
--   message continues its parent's segment when it is the parent's first
--   child, and starts a segment of its own (branch_id = its own id)
--   otherwise; depth is its position from the start of the conversation.
--   Listing a branch then walks one step per fork, not one per message: a
--   10,000-turn transcript with two edits is three index range scans.
-- * generation: which reply to its turn this is (0 is SendMessage's,
--   RegenerateReply's count on), replacing "one reply per turn".
-- * reply_lease_generation, reply_lease_key: which reply the holder of a
--   turn's reply lease is writing, and under which RegenerateReply
--   idempotency key, so a retry waits for that reply.
-- * conversations.active_leaf_id: the last message of the branch members
--   see and new turns follow.

ALTER TABLE conversation.messages
    ADD COLUMN parent_id uuid,
    ADD COLUMN branch_id uuid,
    ADD COLUMN depth integer,
    ADD COLUMN generation integer NOT NULL DEFAULT 0 CHECK (generation >= 0),
    ADD COLUMN reply_lease_generation integer,
    ADD COLUMN reply_lease_key text;

-- The backfills below must see every tenant's rows. Migrations run as the
-- tables' owner, whom FORCE ROW LEVEL SECURITY binds like anyone else (no
-- app.tenant_id: no rows), so it is lifted for this transaction only.
-- (Migration 0009's message_count backfill ran under it and counted
-- nothing; it is redone here.)
ALTER TABLE conversation.messages NO FORCE ROW LEVEL SECURITY;
ALTER TABLE conversation.conversations NO FORCE ROW LEVEL SECURITY;

-- Leases taken before this migration were all for a turn's first reply.
UPDATE conversation.messages SET reply_lease_generation = 0 WHERE reply_lease_until IS NOT NULL;

-- Transcripts so far are single paths in seq order: one segment each.
WITH ordered AS (
    SELECT tenant_id, message_id,
           lag(message_id) OVER w AS parent_id,
           first_value(message_id) OVER w AS branch_id,
           row_number() OVER w AS depth
      FROM conversation.messages
    WINDOW w AS (PARTITION BY tenant_id, conversation_id ORDER BY seq)
)
UPDATE conversation.messages m
   SET parent_id = o.parent_id, branch_id = o.branch_id, depth = o.depth
  FROM ordered o
 WHERE m.tenant_id = o.tenant_id AND m.message_id = o.message_id;

ALTER TABLE conversation.messages
    ALTER COLUMN branch_id SET NOT NULL,
    ALTER COLUMN depth SET NOT NULL,
    ADD CHECK (depth >= 1),
    ADD FOREIGN KEY (tenant_id, parent_id)
        REFERENCES conversation.messages (tenant_id, message_id) ON DELETE CASCADE,
    -- A segment is a path: one message per depth. Also the index a branch
    -- is listed by.
    ADD UNIQUE (tenant_id, branch_id, depth),
    DROP CONSTRAINT messages_tenant_id_reply_to_key,
    ADD UNIQUE (tenant_id, reply_to, generation);

-- A message's children (its other versions, and whether a new child starts
-- a segment). conversation_id serves the first turns, whose parent is NULL.
CREATE INDEX messages_by_parent ON conversation.messages (tenant_id, parent_id, conversation_id);

ALTER TABLE conversation.conversations
    ADD COLUMN active_leaf_id uuid,
    ADD FOREIGN KEY (tenant_id, active_leaf_id)
        REFERENCES conversation.messages (tenant_id, message_id) ON DELETE SET NULL (active_leaf_id);

UPDATE conversation.conversations c
   SET active_leaf_id = (SELECT m.message_id FROM conversation.messages m
                          WHERE m.tenant_id = c.tenant_id AND m.conversation_id = c.conversation_id
                          ORDER BY m.seq DESC LIMIT 1);

UPDATE conversation.conversations c
   SET message_count = (SELECT count(*) FROM conversation.messages m
                         WHERE m.tenant_id = c.tenant_id AND m.conversation_id = c.conversation_id);

ALTER TABLE conversation.messages FORCE ROW LEVEL SECURITY;
ALTER TABLE conversation.conversations FORCE ROW LEVEL SECURITY;

-- No statistics on messages.tenant_id. Its most common values cover every
-- row at an ANALYZE, so a tenant that had no messages then (a new one, or
-- one that just started) is estimated at one row; every index that begins
-- with tenant_id then costs the same, and a lookup by id may be planned as
-- a scan of the tenant's messages, filtered, and cached that way until the
-- next ANALYZE. Measured with tp-loadgen (senders' tenants empty at the
-- ANALYZE after seeding): the walk of a branch took 20-30 ms and SendMessage
-- ran at 288/s; without these statistics a tenant is estimated at 1/200 of
-- the table and the primary key wins.
ALTER TABLE conversation.messages ALTER COLUMN tenant_id SET STATISTICS 0;
