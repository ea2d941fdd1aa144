-- name: users_by_phone
-- $1 = phone, $2 = after id, $3 = limit
SELECT u.id, u.tenant_id, u.phone, u.wa_id, u.wa_user_id, u.wa_username, u.profile_name, u.email,
       u.time_zone, u.consent_state, u.consent_updated_at, u.created_at,
       COALESCE((SELECT jsonb_agg(jsonb_build_object(
                    'state', c.state, 'source', c.source, 'keyword', c.keyword, 'message_id', c.message_id,
                    'changed_by', c.changed_by, 'at', c.created_at) ORDER BY c.id)
                 FROM consent_changes c WHERE c.user_id = u.id), '[]'::jsonb) AS consent_history
FROM users u
WHERE u.phone = $1 AND u.id > $2
ORDER BY u.id LIMIT $3;

-- name: conversations_by_phone
-- $1 = phone, $2 = after id, $3 = limit
SELECT c.id, c.tenant_id, c.user_id, c.channel_id, ch.kind AS channel_kind, ch.address AS channel_address,
       c.status, c.last_message_at, c.last_inbound_at, c.created_at, u.phone
FROM conversations c
JOIN users u ON u.id = c.user_id
JOIN channels ch ON ch.id = c.channel_id
WHERE u.phone = $1 AND c.id > $2
ORDER BY c.id LIMIT $3;

-- name: conversation_exists
-- $1 = conversation id
SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1);

-- name: conversation_messages
-- $1 = conversation id, $2 = after id, $3 = limit
SELECT id, conversation_id, direction, message_type, body, media, details, status, error_code, error_message,
       segments, keyword, provider, provider_message_id, provider_sent_at, created_at, status_updated_at
FROM messages
WHERE conversation_id = $1 AND id > $2
ORDER BY id LIMIT $3;

-- name: agent_logs
-- Newest first. $1 = before id (cursor; 0 = from the newest), $2 = limit, $3 = agent, $4 = conversation id,
-- $5 = status, $6 = since, $7 = until, $8 = tenant id
SELECT id, tenant_id, agent, action, conversation_id, message_id, agent_task_id, input, output, implementation,
       model, latency_ms, tokens_in, tokens_out, cost_usd, status, error, created_at
FROM agent_actions_log
WHERE ($1::bigint = 0 OR id < $1)
  AND ($3::text IS NULL OR agent = $3)
  AND ($4::bigint IS NULL OR conversation_id = $4)
  AND ($5::text IS NULL OR status = $5)
  AND ($6::timestamptz IS NULL OR created_at >= $6)
  AND ($7::timestamptz IS NULL OR created_at < $7)
  AND ($8::bigint IS NULL OR tenant_id = $8)
ORDER BY id DESC LIMIT $2;

-- name: dead_letters
-- $1 = after id, $2 = limit, $3 = status
SELECT id, tenant_id, agent_task_id, kind, payload, error, attempts, status, requeued_at, requeued_by, created_at
FROM event_dead_letters
WHERE id > $1 AND ($3::text IS NULL OR status = $3)
ORDER BY id LIMIT $2;
