-- name: user_by_phone
-- $1 = tenant_id, $2 = phone (E.164)
SELECT id, consent_state FROM users WHERE tenant_id = $1 AND phone = $2;

-- name: insert_user_by_phone
-- Someone we write to first: a user with a phone and nothing else yet. A concurrent first message
-- (inbound or another send) may create the same user: the loser finds the winner's row.
-- $1 = tenant_id, $2 = phone (E.164), $3 = time zone the number maps to (or NULL)
INSERT INTO users (tenant_id, phone, time_zone) VALUES ($1, $2, $3)
ON CONFLICT (tenant_id, phone) WHERE phone IS NOT NULL DO NOTHING
RETURNING id, consent_state;

-- name: open_conversation
-- The conversation a first outbound message goes in (an inbound message later lands in the same one:
-- same tenant, user and channel). last_inbound_at stays NULL: WhatsApp's window is not open.
-- $1 = tenant_id, $2 = user_id, $3 = channel_id
WITH ins AS (
    INSERT INTO conversations (tenant_id, user_id, channel_id) VALUES ($1, $2, $3)
    ON CONFLICT ON CONSTRAINT conversations_tenant_user_channel_key DO NOTHING
    RETURNING id
)
SELECT id FROM ins
UNION ALL
SELECT id FROM conversations WHERE tenant_id = $1 AND user_id = $2 AND channel_id = $3
LIMIT 1;

-- name: set_preferences
-- An operator's change to how a user is messaged. Only the fields named change.
-- $1 = tenant_id, $2 = user_id, $3 = set time_zone, $4 = time_zone, $5 = set quiet_hours_enabled,
-- $6 = quiet_hours_enabled
UPDATE users SET time_zone = CASE WHEN $3::boolean THEN $4::text ELSE time_zone END,
                 quiet_hours_enabled = CASE WHEN $5::boolean THEN $6::boolean ELSE quiet_hours_enabled END,
                 updated_at = now()
WHERE tenant_id = $1 AND id = $2
RETURNING id, tenant_id, phone, time_zone, quiet_hours_enabled, consent_state;

-- name: set_budget_limits
-- A user's own limits (NULL: the tenant's). The counters are the dispatcher's; a new row starts at zero.
-- $1 = tenant_id, $2 = user_id, $3 = hourly_limit, $4 = daily_limit
INSERT INTO user_message_budget (user_id, tenant_id, hourly_limit, daily_limit)
SELECT u.id, u.tenant_id, $3, $4 FROM users u WHERE u.tenant_id = $1 AND u.id = $2
ON CONFLICT (user_id) DO UPDATE SET hourly_limit = EXCLUDED.hourly_limit, daily_limit = EXCLUDED.daily_limit,
                                    updated_at = now()
RETURNING hourly_limit, daily_limit;
