-- name: insert_event
-- $1 = tenant_id, $2 = type, $3 = conversation_id, $4 = user_id, $5 = message_id, $6 = payload
INSERT INTO events (tenant_id, type, conversation_id, user_id, message_id, payload)
VALUES ($1, $2, $3, $4, $5, $6);
