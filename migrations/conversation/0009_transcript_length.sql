-- How many messages a conversation holds, kept on its row (which every
-- send locks and touches anyway), so the transcript length limit is
-- checked without counting the transcript.
ALTER TABLE conversation.conversations
    ADD COLUMN message_count integer NOT NULL DEFAULT 0 CHECK (message_count >= 0);
UPDATE conversation.conversations c
   SET message_count = (SELECT count(*) FROM conversation.messages m
                         WHERE m.conversation_id = c.conversation_id);
