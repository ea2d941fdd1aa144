-- name: enqueue
-- $1 = tenant_id, $2 = conversation_id, $3 = user_id, $4 = body, $5 = priority, $6 = reason,
-- $7 = class, $8 = source message id, $9 = idempotency key
INSERT INTO message_queue (tenant_id, conversation_id, user_id, channel_id, body, priority, reason, class,
                           source_message_id, idempotency_key)
SELECT $1, $2, $3, c.channel_id, $4, $5, $6, $7, $8, $9 FROM conversations c WHERE c.id = $2
ON CONFLICT ON CONSTRAINT message_queue_idempotency_key DO NOTHING
RETURNING id;
