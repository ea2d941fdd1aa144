-- name: tenant
-- $1 = tenant_id
SELECT id, slug, name, time_zone, quiet_hours, budget_hourly, budget_daily, default_sms_channel_id,
       default_whatsapp_channel_id, updated_at
FROM tenants WHERE id = $1;

-- name: message
-- One queue row of this tenant, with who it goes to and from.
-- $1 = tenant_id, $2 = queue id
SELECT q.id, q.tenant_id, q.user_id, u.phone, q.conversation_id, q.channel_id, ch.kind AS channel_kind,
       q.class, q.reason, q.priority, q.status, q.body, q.template_name, q.template_language,
       q.template_variables, q.scheduled_for, q.next_attempt_at, q.expires_at, q.attempts, q.max_attempts,
       q.last_error, q.error_code, q.provider_message_id, q.segments, q.encoding, q.idempotency_key,
       q.source_message_id, q.message_id, q.sent_at, q.status_updated_at, q.created_at, q.updated_at
FROM message_queue q JOIN users u ON u.id = q.user_id JOIN channels ch ON ch.id = q.channel_id
WHERE q.tenant_id = $1 AND q.id = $2;

-- name: verdicts
-- Every gate decision on the row, in the order they were made.
-- $1 = tenant_id, $2 = queue id
SELECT id, gate, verdict, reason, until, detail, created_at
FROM message_queue_verdicts WHERE tenant_id = $1 AND queue_id = $2
ORDER BY id;

-- name: queue
-- Newest first (index message_queue_tenant). $1 = tenant_id, $2 = before id (cursor; 0 = from the
-- newest), $3 = limit, $4 = phone, $5 = status, $6 = class
SELECT q.id, q.user_id, u.phone, q.conversation_id, q.channel_id, q.class, q.reason, q.priority, q.status,
       left(q.body, 160) AS body, q.template_name, q.scheduled_for, q.next_attempt_at, q.expires_at, q.attempts,
       q.last_error, q.provider_message_id, q.sent_at, q.created_at, q.updated_at
FROM message_queue q JOIN users u ON u.id = q.user_id
WHERE q.tenant_id = $1
  AND ($2::bigint = 0 OR q.id < $2)
  AND ($4::text IS NULL OR u.phone = $4)
  AND ($5::text IS NULL OR q.status = $5)
  AND ($6::text IS NULL OR q.class = $6)
ORDER BY q.id DESC LIMIT $3;

-- name: user
-- A user of this tenant as the budget gate sees them, with their budget row (NULLs when none yet).
-- $1 = tenant_id, $2 = user_id
SELECT u.id, u.tenant_id, u.phone, u.time_zone, u.quiet_hours_enabled, u.consent_state,
       b.hourly_limit, b.daily_limit, b.hour_start, COALESCE(b.hour_count, 0) AS hour_count, b.day_start,
       COALESCE(b.day_count, 0) AS day_count, b.reply_hour_start, COALESCE(b.reply_hour_count, 0) AS reply_hour_count,
       b.last_proactive_at
FROM users u LEFT JOIN user_message_budget b ON b.user_id = u.id
WHERE u.tenant_id = $1 AND u.id = $2;
