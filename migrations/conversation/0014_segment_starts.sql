-- The messages that start a segment (branch_id = message_id): every first
-- turn, and every later child of a message (an edit, a regenerated reply).
-- A message has other versions only if its parent has such a later child,
-- so ListMessages reads this index once per page to learn which of the
-- page's parents forked, instead of looking up every row's siblings: on a
-- 10,000-turn transcript that halved the page query (pgbench, one client:
-- 0.98 -> 0.56 ms a transaction). Forks are few, so the index is small and
-- costs only the inserts that fork.
CREATE INDEX messages_segment_starts
    ON conversation.messages (tenant_id, conversation_id, parent_id)
    WHERE branch_id = message_id;
