-- The SQL of one SendMessage with the offline coach, statement by statement
-- as the services issue it (read from PostgreSQL's log with
-- log_statement = all), for `pgbench --protocol=prepared`. Each client
-- (:client_id) writes to its own conversation, as each load stream does.
--
-- Differences from the services, all making this script's rate higher
-- (the baseline harder to reach), except the first:
-- * the services send BEGIN and set_config as one simple query; pgbench
--   cannot combine a statement with \gset in prepared mode, so here BEGIN
--   is its own round trip (one extra per transaction);
-- * the user message is always the same (the services' vary) and the
--   profile the coach keeps is never rewritten (the services rewrite it
--   when a message changes what is known about the member).

-- knowledge: the frameworks to ground the reply (Retrieve; no transaction).
WITH terms AS MATERIALIZED (
    SELECT t.lexeme, coalesce(c.ndoc, 0) AS ndoc
      FROM (SELECT DISTINCT lexeme FROM unnest(to_tsvector('english', 'We need to hire more engineers. We''re 40 engineers at series B. director'))
             WHERE lexeme <> ALL('{ask,build,chang,cover,dynam,engin,first,make,manag,mani,need,new,one,peopl,plan,problem,product,question,rather,set,system,team,technic,without,work,write}'::text[])) AS t
      LEFT JOIN knowledge.corpus_lexicon c ON c.word = t.lexeme
 ), q AS MATERIALIZED (
    SELECT (SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery FROM terms) AS query,
           (SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery
              FROM (SELECT lexeme FROM terms ORDER BY ndoc, lexeme LIMIT 8) AS rarest)
               AS passage_query,
           websearch_to_tsquery('english', 'We need to hire more engineers. We''re 40 engineers at series B. director') AS all_terms
 ) SELECT e.entry_id,
          ts_rank(e.search, q.query, 0)
              * CASE WHEN e.search @@ q.all_terms THEN 2.0::real ELSE 1.0::real END AS score
     FROM knowledge.entries e, q
    WHERE q.query IS NOT NULL AND e.search @@ q.query AND e.kind = ANY('{framework,topic}')
    ORDER BY score DESC, e.entry_id
    LIMIT 8;

-- conversation, begin_exchange: the user's turn, committed before the reply.
-- The offline coach reads only the user's earlier turns (a model reads both).
\set with_replies false
BEGIN;
SELECT set_config('app.tenant_id', tenant_id::text, true) AS tenant_set, tenant_id AS tenant,
       conversation_id AS conv, user_id AS usr
  FROM loadgen.pgbench_targets WHERE client_id = :client_id \gset
SELECT COALESCE(active_leaf_id::text, '') AS leaf FROM conversation.conversations
 WHERE conversation_id = :conv AND user_id = :usr FOR UPDATE \gset
WITH turn AS (
     INSERT INTO conversation.messages
        (message_id, tenant_id, conversation_id, role, content, idempotency_key,
         reply_lease_until, reply_lease_holder, reply_lease_generation,
         parent_id, branch_id, depth)
     SELECT n.id, :tenant, :conv, 'user',
            'We need to hire more engineers. We''re 40 engineers at series B.', NULL,
            now() + make_interval(secs => 15), gen_random_uuid(), 0,
            p.message_id,
            CASE WHEN p.message_id IS NULL OR EXISTS (
                     SELECT 1 FROM conversation.messages c
                      WHERE c.tenant_id = :tenant AND c.parent_id = p.message_id)
                 THEN n.id ELSE p.branch_id END,
            COALESCE(p.depth, 0) + 1
       FROM (SELECT gen_random_uuid() AS id) AS n
       LEFT JOIN conversation.messages p ON p.tenant_id = :tenant AND p.message_id = NULLIF(:leaf, '')::uuid
     RETURNING message_id, conversation_id, role, content, create_time, parent_id, depth,
               reply_to, generation
 ), counted AS (
     UPDATE conversation.conversations
        SET update_time = now(), message_count = message_count + 2,
            active_leaf_id = (SELECT message_id FROM turn)
      WHERE conversation_id = :conv
      RETURNING message_count)
SELECT turn.message_id AS user_message_id, turn.conversation_id, turn.role, turn.content,
       turn.create_time, COALESCE(turn.parent_id::text, '') AS user_parent_id, turn.depth,
       turn.reply_to, turn.generation, counted.message_count, quotas.*
  FROM turn, counted, LATERAL (
       SELECT coalesce(array_agg(user_id ORDER BY user_id), '{}') AS quota_users,
              coalesce(array_agg(monthly_messages ORDER BY user_id), '{}') AS quota_messages,
              coalesce(array_agg(monthly_tokens ORDER BY user_id), '{}') AS quota_tokens
         FROM conversation.quotas WHERE user_id IN ('', :usr)) AS quotas \gset
WITH RECURSIVE chain (branch_id, upto) AS (
    SELECT branch_id, depth FROM conversation.messages
     WHERE message_id = NULLIF(:user_parent_id, '')::uuid
  UNION ALL
    SELECT p.branch_id, p.depth
      FROM chain c
      CROSS JOIN LATERAL (
          SELECT parent_id FROM conversation.messages
           WHERE message_id = c.branch_id LIMIT 1) f
      CROSS JOIN LATERAL (
          SELECT branch_id, depth FROM conversation.messages
           WHERE message_id = f.parent_id LIMIT 1) p
), counted_member AS (
     INSERT INTO conversation.member_usage AS u (tenant_id, user_id, day, messages)
     SELECT :tenant, :usr, (now() AT TIME ZONE 'UTC')::date, 1 WHERE true
     ON CONFLICT (tenant_id, user_id, day) DO UPDATE SET messages = u.messages + 1
), counted_tenant AS (
     INSERT INTO conversation.tenant_token_usage AS t (tenant_id, day, shard, messages)
     SELECT :tenant, (now() AT TIME ZONE 'UTC')::date, conversation.usage_shard(:usr), 1 WHERE true
     ON CONFLICT (tenant_id, day, shard) DO UPDATE SET messages = t.messages + 1
), transcript AS (
     SELECT m.role, m.content, m.depth FROM chain c CROSS JOIN LATERAL (
         SELECT role, content, depth FROM conversation.messages
          WHERE branch_id = c.branch_id AND depth <= c.upto
            AND depth > (SELECT max(upto) FROM chain) - 40
            AND (role = 'user' OR :with_replies)
          ORDER BY depth DESC LIMIT 40) m
      ORDER BY m.depth DESC LIMIT 40)
SELECT ARRAY(SELECT role FROM transcript ORDER BY depth) AS roles,
       ARRAY(SELECT content FROM transcript ORDER BY depth) AS contents,
       previous.cited_frameworks AS previous_citations,
       previous.content AS previous_reply,
       p.role, p.team_size, p.stage, p.update_time
  FROM (VALUES (1)) AS one
  LEFT JOIN conversation.messages previous
    ON previous.tenant_id = :tenant AND previous.message_id = NULLIF(:user_parent_id, '')::uuid
   AND previous.role = 'assistant' AND NOT :with_replies
  LEFT JOIN conversation.member_profiles p ON p.user_id = :usr;
COMMIT;

-- conversation, complete_exchange: the assistant's turn.
BEGIN;
SELECT set_config('app.tenant_id', :tenant, true);
SELECT active_leaf_id FROM conversation.conversations
 WHERE conversation_id = :conv FOR UPDATE;
WITH reply AS (
     INSERT INTO conversation.messages
         (message_id, tenant_id, conversation_id, role, content, reply_to, responder,
          cited_frameworks, policy_violations, grounded, input_tokens, output_tokens,
          generation, idempotency_key, parent_id, branch_id, depth)
     SELECT n.id, :tenant, :conv, 'assistant',
             'Here''s what I understand so far: you''re a director; the organisation has about 40 engineers; it''s a series B company; the problem: you need to hire more engineers. Before I suggest anything: what is the hiring meant to fix? Is it a throughput problem, a coverage problem (on-call, a domain no one owns), or a bet on a new product line? And who will these engineers report to, with what managers? Headcount changes the system: every ten engineers add roughly a team, and every team adds coordination. One lens: Technical Coherence asks whether more people will build one product or several diverging ones. Which of those outcomes worries you most?',
            :user_message_id, 'offline', '{technical-coherence}', '{}', true, NULL, NULL, 0, NULL,
            p.message_id,
            CASE WHEN p.message_id IS NULL OR EXISTS (
                     SELECT 1 FROM conversation.messages c
                      WHERE c.tenant_id = :tenant AND c.parent_id = p.message_id)
                 THEN n.id ELSE p.branch_id END,
            COALESCE(p.depth, 0) + 1
       FROM (SELECT gen_random_uuid() AS id) AS n, conversation.messages p
      WHERE p.tenant_id = :tenant AND p.message_id = :user_message_id
     ON CONFLICT (tenant_id, reply_to, generation) DO NOTHING
     RETURNING message_id, conversation_id, role, content, create_time, parent_id, depth,
               reply_to, generation
), moved AS (
     UPDATE conversation.conversations c
        SET update_time = now(),
            active_leaf_id = CASE WHEN c.active_leaf_id = :user_message_id
                                  THEN r.message_id ELSE c.active_leaf_id END
       FROM reply r
      WHERE c.conversation_id = :conv)
SELECT * FROM reply;
COMMIT;
