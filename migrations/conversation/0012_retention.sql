-- The retention job (RetentionService.PurgeExpired) finds a tenant's
-- conversations whose last turn is older than its cutoff, oldest first.
CREATE INDEX conversations_by_last_turn ON conversation.conversations (tenant_id, update_time);
