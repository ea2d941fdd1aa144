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
