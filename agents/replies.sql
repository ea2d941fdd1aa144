-- name: enqueue
-- $1 = tenant_id, $2 = conversation_id, $3 = user_id, $4 = body, $5 = priority, $6 = reason,
-- $7 = compliance, $8 = source message id, $9 = dedupe key
INSERT INTO message_queue (tenant_id, conversation_id, user_id, body, priority, reason, compliance,
                           source_message_id, dedupe_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT ON CONSTRAINT message_queue_dedupe_key DO NOTHING
RETURNING id;
