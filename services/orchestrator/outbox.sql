-- name: enqueue
-- The only INSERT into message_queue. A key already used by this tenant inserts nothing (the caller
-- then reads the first row with `by_key`); the opt-out guard (migration 0013) refuses a row for an
-- opted-out user unless it is the opt-out confirmation.
-- $1 = tenant_id, $2 = user_id, $3 = conversation_id, $4 = channel_id (NULL: the conversation's), $5 = class, $6 = reason,
-- $7 = priority, $8 = body, $9 = template_name, $10 = template_language, $11 = template_variables,
-- $12 = scheduled_for (NULL: now), $13 = expires_at, $14 = idempotency_key, $15 = request_hash,
-- $16 = source_message_id, $17 = max_attempts
INSERT INTO message_queue (tenant_id, user_id, conversation_id, channel_id, class, reason, priority, body,
                           template_name, template_language, template_variables, scheduled_for,
                           next_attempt_at, expires_at, idempotency_key, request_hash, source_message_id,
                           max_attempts)
VALUES ($1, $2, $3, COALESCE($4, (SELECT c.channel_id FROM conversations c WHERE c.id = $3 AND c.tenant_id = $1)),
        $5, $6, $7, $8, $9, $10, $11, COALESCE($12, now()), COALESCE($12, now()), $13, $14, $15, $16, $17)
ON CONFLICT ON CONSTRAINT message_queue_idempotency_key DO NOTHING
RETURNING id, status;

-- name: by_key
-- $1 = tenant_id, $2 = idempotency_key
SELECT id, status, request_hash FROM message_queue WHERE tenant_id = $1 AND idempotency_key = $2;

-- name: lock_row
-- $1 = tenant_id, $2 = queue id
SELECT id, status, expires_at FROM message_queue WHERE tenant_id = $1 AND id = $2 FOR UPDATE;

-- name: cancel
-- $1 = queue id
UPDATE message_queue SET status = 'canceled', updated_at = now(), next_attempt_at = now(),
                         last_error = 'canceled by an operator'
WHERE id = $1
RETURNING id, status;

-- name: requeue
-- Back in line with a fresh set of attempts. An expires_at already past is cleared: the operator asked
-- for the message to go now (the verdict keeps the old value).
-- $1 = queue id
UPDATE message_queue SET status = 'queued', attempts = 0, next_attempt_at = now(), updated_at = now(),
                         expires_at = CASE WHEN expires_at <= now() THEN NULL ELSE expires_at END,
                         last_error = NULL, error_code = NULL, locked_by = NULL, locked_until = NULL
WHERE id = $1
RETURNING id, status;

-- name: operator_verdict
-- $1 = tenant_id, $2 = queue id, $3 = verdict, $4 = reason, $5 = detail
INSERT INTO message_queue_verdicts (tenant_id, queue_id, gate, verdict, reason, detail)
VALUES ($1, $2, 'operator', $3, $4, $5);

-- name: tenant_senders
-- $1 = tenant_id
SELECT default_sms_channel_id, default_whatsapp_channel_id FROM tenants WHERE id = $1;

-- name: channel
-- A channel of this tenant (outbox.py checks it can send: active, of the family, and not a catch-all
-- unless it has a Messaging Service to send through).
-- $1 = tenant_id, $2 = channel id
SELECT id, kind, address, active, messaging_service_sid FROM channels WHERE tenant_id = $1 AND id = $2;

-- name: last_conversation
-- The channel of this kind family the user last wrote to (a reply goes from the number they wrote to).
-- $1 = tenant_id, $2 = user_id, $3 = channel kinds
SELECT c.id AS conversation_id, c.channel_id FROM conversations c JOIN channels ch ON ch.id = c.channel_id
WHERE c.tenant_id = $1 AND c.user_id = $2 AND ch.kind = ANY($3::text[]) AND ch.active
  -- a catch-all has no number to send from unless it sends through a Messaging Service
  AND (ch.address <> '*' OR ch.messaging_service_sid IS NOT NULL)
ORDER BY c.last_inbound_at DESC NULLS LAST, c.last_message_at DESC, c.id DESC
LIMIT 1;
