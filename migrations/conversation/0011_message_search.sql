-- Full-text search over transcripts (ConversationService.SearchMessages):
-- each message's words, stemmed in English, kept by PostgreSQL itself as
-- the content is written, under a GIN index. Deleting a message deletes
-- its entry in the index with it.
ALTER TABLE conversation.messages
    ADD COLUMN search tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED;
CREATE INDEX messages_search ON conversation.messages USING gin (search);
