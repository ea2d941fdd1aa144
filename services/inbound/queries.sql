-- name: user_by_phone
-- $1 = tenant_id, $2 = phone
SELECT id, consent_state, profile_name, wa_id, wa_user_id, wa_username FROM users
WHERE tenant_id = $1 AND phone = $2;

-- name: user_by_bsuid
-- $1 = tenant_id, $2 = wa_user_id; prefer the row that also has a phone
SELECT id, consent_state, profile_name, wa_id, wa_user_id, wa_username FROM users
WHERE tenant_id = $1 AND wa_user_id = $2 ORDER BY (phone IS NOT NULL) DESC, id LIMIT 1;

-- name: user_by_username
-- $1 = tenant_id, $2 = wa_username
SELECT id, consent_state, profile_name, wa_id, wa_user_id, wa_username FROM users
WHERE tenant_id = $1 AND wa_username = $2 ORDER BY (phone IS NOT NULL) DESC, id LIMIT 1;

-- name: attach_phone_to_bsuid_user
-- A user first seen by BSUID only now shows a phone: keep one user.
-- $1 = tenant_id, $2 = wa_user_id, $3 = phone, $4 = time_zone
UPDATE users SET phone = $3, time_zone = COALESCE(time_zone, $4), updated_at = now()
WHERE tenant_id = $1 AND wa_user_id = $2 AND phone IS NULL
RETURNING id, consent_state, profile_name, wa_id, wa_user_id, wa_username;

-- name: insert_user_by_phone
-- $1 = tenant_id, $2 = phone, $3 = wa_id, $4 = wa_user_id, $5 = wa_parent_user_id, $6 = wa_username,
-- $7 = profile_name, $8 = time_zone
INSERT INTO users (tenant_id, phone, wa_id, wa_user_id, wa_parent_user_id, wa_username, profile_name, time_zone)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (tenant_id, phone) WHERE phone IS NOT NULL
DO UPDATE SET updated_at = now()
RETURNING id, consent_state, profile_name, wa_id, wa_user_id, wa_username;

-- name: insert_user_by_bsuid
-- $1 = tenant_id, $2 = wa_user_id, $3 = wa_parent_user_id, $4 = wa_username, $5 = profile_name
INSERT INTO users (tenant_id, wa_user_id, wa_parent_user_id, wa_username, profile_name)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant_id, wa_user_id) WHERE phone IS NULL AND wa_user_id IS NOT NULL
DO UPDATE SET updated_at = now()
RETURNING id, consent_state, profile_name, wa_id, wa_user_id, wa_username;

-- name: insert_user_by_username
-- $1 = tenant_id, $2 = wa_username, $3 = profile_name
INSERT INTO users (tenant_id, wa_username, profile_name) VALUES ($1, $2, $3)
ON CONFLICT (tenant_id, wa_username) WHERE phone IS NULL AND wa_user_id IS NULL AND wa_username IS NOT NULL
DO UPDATE SET updated_at = now()
RETURNING id, consent_state, profile_name, wa_id, wa_user_id, wa_username;

-- name: refresh_user_profile
-- $1 = user id, $2 = profile_name, $3 = wa_id, $4 = wa_user_id, $5 = wa_parent_user_id, $6 = wa_username
UPDATE users SET profile_name = COALESCE($2, profile_name), wa_id = COALESCE($3, wa_id),
                 wa_user_id = COALESCE($4, wa_user_id), wa_parent_user_id = COALESCE($5, wa_parent_user_id),
                 wa_username = COALESCE($6, wa_username), updated_at = now()
WHERE id = $1;

-- name: insert_inbound
-- Conversation upsert, message, message.received event and agent task in one statement.
-- $1 = tenant_id, $2 = user_id, $3 = channel_id, $4 = provider, $5 = provider_message_id,
-- $6 = message_type, $7 = body, $8 = media, $9 = details, $10 = segments, $11 = keyword, $12 = raw,
-- $13 = provider_sent_at, $14 = event payload, $15 = task max_attempts
WITH conv AS (
    INSERT INTO conversations (tenant_id, user_id, channel_id, last_message_at, last_inbound_at)
    VALUES ($1, $2, $3, now(), now())
    ON CONFLICT ON CONSTRAINT conversations_tenant_user_channel_key
    DO UPDATE SET last_message_at = now(), last_inbound_at = now(), status = 'active'
    RETURNING id
), msg AS (
    INSERT INTO messages (tenant_id, conversation_id, direction, provider, provider_message_id,
                          message_type, body, media, details, status, segments, keyword, raw, provider_sent_at)
    SELECT $1, conv.id, 'inbound', $4, $5, $6, $7, $8, $9, 'received', $10, $11, $12, $13 FROM conv
    ON CONFLICT ON CONSTRAINT messages_provider_message_id_key DO NOTHING
    RETURNING id, conversation_id
), event AS (
    INSERT INTO events (tenant_id, type, conversation_id, user_id, message_id, payload)
    SELECT $1, 'message.received', msg.conversation_id, $2, msg.id, $14 FROM msg
), task AS (
    INSERT INTO agent_tasks (tenant_id, conversation_id, message_id, kind, max_attempts)
    SELECT $1, msg.conversation_id, msg.id, 'process_message', $15 FROM msg
)
SELECT conv.id AS conversation_id, msg.id AS message_id FROM conv LEFT JOIN msg ON true;

-- name: insert_inbound_batch
-- Group commit for known senders without a keyword: many webhooks' messages in one statement and one
-- commit. Returns a row per input whose sender is known (by tenant and phone); an input with no row
-- back has a new sender and takes the full path. A redelivery touches nothing: message_id NULL.
-- $1 = a JSON array, one object per message: n (its place in the batch), tenant_id, phone, channel_id,
-- provider, provider_message_id, message_type, body, media, details, segments, raw, provider_sent_at,
-- payload (the event's), max_attempts, profile_name, wa_id, wa_user_id, wa_parent_user_id, wa_username;
-- an absent key is NULL. One JSON document costs the client a fraction of nineteen typed arrays, and
-- the JSON columns arrive already parsed.
WITH input AS (
    SELECT * FROM json_to_recordset($1::json)
        AS i (n int, tenant_id bigint, phone text, channel_id bigint, provider text, provider_message_id text,
              message_type text, body text, media jsonb, details jsonb, segments int, raw jsonb,
              provider_sent_at timestamptz, payload jsonb, max_attempts int, profile_name text, wa_id text,
              wa_user_id text, wa_parent_user_id text, wa_username text)
), known AS (
    SELECT i.*, u.id AS user_id FROM input i JOIN users u ON u.tenant_id = i.tenant_id AND u.phone = i.phone
), fresh AS (
    -- One row per new provider message id (a batch may carry a redelivery of its own message).
    SELECT DISTINCT ON (k.provider, k.provider_message_id) k.* FROM known k
    WHERE NOT EXISTS (SELECT 1 FROM messages m
                      WHERE m.provider = k.provider AND m.provider_message_id = k.provider_message_id)
    ORDER BY k.provider, k.provider_message_id, k.n
), profile AS (
    UPDATE users u SET profile_name = COALESCE(f.profile_name, u.profile_name), wa_id = COALESCE(f.wa_id, u.wa_id),
                       wa_user_id = COALESCE(f.wa_user_id, u.wa_user_id),
                       wa_parent_user_id = COALESCE(f.wa_parent_user_id, u.wa_parent_user_id),
                       wa_username = COALESCE(f.wa_username, u.wa_username), updated_at = now()
    FROM (SELECT DISTINCT ON (user_id) * FROM fresh ORDER BY user_id, n DESC) f
    WHERE u.id = f.user_id AND ((f.profile_name IS NOT NULL AND u.profile_name IS DISTINCT FROM f.profile_name)
                                OR (f.wa_id IS NOT NULL AND u.wa_id IS DISTINCT FROM f.wa_id)
                                OR (f.wa_user_id IS NOT NULL AND u.wa_user_id IS DISTINCT FROM f.wa_user_id)
                                OR (f.wa_username IS NOT NULL AND u.wa_username IS DISTINCT FROM f.wa_username))
), conv AS (
    -- Sorted, so that concurrent batches lock conversations in the same order and never deadlock.
    INSERT INTO conversations (tenant_id, user_id, channel_id, last_message_at, last_inbound_at)
    SELECT DISTINCT tenant_id, user_id, channel_id, now(), now() FROM fresh
    ORDER BY tenant_id, user_id, channel_id
    ON CONFLICT ON CONSTRAINT conversations_tenant_user_channel_key
    DO UPDATE SET last_message_at = now(), last_inbound_at = now(), status = 'active'
    RETURNING id, tenant_id, user_id, channel_id
), msg AS (
    INSERT INTO messages (tenant_id, conversation_id, direction, provider, provider_message_id,
                          message_type, body, media, details, status, segments, raw, provider_sent_at)
    SELECT f.tenant_id, c.id, 'inbound', f.provider, f.provider_message_id, f.message_type, f.body, f.media,
           f.details, 'received', f.segments, f.raw, f.provider_sent_at
    FROM fresh f
    JOIN conv c ON c.tenant_id = f.tenant_id AND c.user_id = f.user_id AND c.channel_id = f.channel_id
    ORDER BY f.n  -- ids in arrival order: the agents work through a conversation in id order
    ON CONFLICT ON CONSTRAINT messages_provider_message_id_key DO NOTHING
    RETURNING id, tenant_id, conversation_id, provider, provider_message_id
), event AS (
    INSERT INTO events (tenant_id, type, conversation_id, user_id, message_id, payload)
    SELECT m.tenant_id, 'message.received', m.conversation_id, f.user_id, m.id, f.payload
    FROM msg m JOIN fresh f ON f.provider = m.provider AND f.provider_message_id = m.provider_message_id
), task AS (
    INSERT INTO agent_tasks (tenant_id, conversation_id, message_id, kind, max_attempts)
    SELECT m.tenant_id, m.conversation_id, m.id, 'process_message', f.max_attempts
    FROM msg m JOIN fresh f ON f.provider = m.provider AND f.provider_message_id = m.provider_message_id
    ORDER BY m.id
)
SELECT k.n, k.user_id, m.conversation_id, m.id AS message_id
FROM known k
LEFT JOIN fresh f ON f.n = k.n
LEFT JOIN msg m ON m.provider = f.provider AND m.provider_message_id = f.provider_message_id;

-- name: set_consent
-- $1 = user id, $2 = state, $3 = source, $4 = keyword, $5 = message id, $6 = changed_by
WITH u AS (
    UPDATE users SET consent_state = $2, consent_updated_at = now(), updated_at = now()
    WHERE id = $1 RETURNING id, tenant_id
)
INSERT INTO consent_changes (tenant_id, user_id, state, source, keyword, message_id, changed_by)
SELECT u.tenant_id, u.id, $2, $3, $4, $5, $6 FROM u
RETURNING id;
