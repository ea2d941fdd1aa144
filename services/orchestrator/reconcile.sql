-- name: lapse
-- Sends whose dispatcher stopped renewing its lease (killed, partitioned): the provider may or may not
-- have the message, so the row is never simply retried. It becomes 'unknown', keeping locked_by and
-- attempts (the fence that lets a late result of that dispatcher still be recorded).
-- $1 = now, $2 = limit
WITH due AS (
    SELECT id FROM message_queue
    WHERE status = 'sending' AND locked_until < $1
    ORDER BY locked_until LIMIT $2
    FOR UPDATE SKIP LOCKED
),
lapsed AS (
    UPDATE message_queue q
    SET status = 'unknown', locked_until = NULL, next_attempt_at = $1, updated_at = now(),
        status_updated_at = $1,
        last_error = format('the lease of %s lapsed during attempt %s: outcome unknown', q.locked_by, q.attempts)
    FROM due WHERE q.id = due.id
    RETURNING q.id, q.tenant_id, q.locked_by, q.attempts
),
verdicts AS (
    INSERT INTO message_queue_verdicts (tenant_id, queue_id, gate, verdict, reason, detail, created_at)
    SELECT tenant_id, id, 'reconcile', 'unknown',
           left(format('lease of %s lapsed during attempt %s: settled by callback or lookup', locked_by, attempts), 200),
           jsonb_build_object('locked_by', locked_by, 'attempts', attempts), $1
    FROM lapsed
)
SELECT id FROM lapsed;

-- name: take_unknown
-- 'unknown' rows whose grace has passed, each taken for one look by this reconciler: next_attempt_at
-- (unused while a row is 'unknown') moves a grace ahead, so that another reconciler skips it meanwhile.
-- $1 = now, $2 = grace seconds, $3 = limit
WITH due AS (
    SELECT id FROM message_queue
    WHERE status = 'unknown' AND next_attempt_at <= $1
      AND COALESCE(send_started_at, updated_at) <= $1::timestamptz - make_interval(secs => $2)
    ORDER BY id LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE message_queue q SET next_attempt_at = $1::timestamptz + make_interval(secs => $2)
FROM due, channels ch, users u, tenants t
WHERE q.id = due.id AND ch.id = q.channel_id AND u.id = q.user_id AND t.id = q.tenant_id
RETURNING q.id, q.tenant_id, q.user_id, q.class, q.attempts, q.max_attempts, q.locked_by, q.send_started_at, q.body,
          q.template_name, q.template_language, q.template_variables, q.segments, q.channel_id, q.sends_template,
          ch.kind AS channel_kind, ch.address AS channel_address, ch.account_sid, ch.messaging_service_sid,
          ch.parent_channel_id, u.phone, u.time_zone,
          t.time_zone AS tenant_time_zone, t.quiet_hours AS tenant_quiet_hours,
          t.budget_hourly AS tenant_budget_hourly, t.budget_daily AS tenant_budget_daily;

-- name: channel_credentials
-- A sender's credentials (a number materialised from a catch-all reads its catch-all's).
-- $1 = channel id
SELECT CASE WHEN ch.parent_channel_id IS NULL THEN ch.credentials ELSE parent.credentials END AS credentials
FROM channels ch LEFT JOIN channels parent ON parent.id = ch.parent_channel_id
WHERE ch.id = $1;

-- name: lock_for_status
-- The queue row a status callback is about, locked before the callback is stored (the dispatcher
-- recording the same send takes this lock first too, see dispatcher.sql lock_owned). Only the
-- verifying tenant's; by our queue id when the callback carries it (and the row does not already name
-- another provider message), else by the provider's id.
-- $1 = tenant id, $2 = queue id or NULL, $3 = provider message id
SELECT id, status, attempts, provider_message_id FROM message_queue
WHERE tenant_id = $1
  AND ((id = $2 AND (provider_message_id IS NULL OR provider_message_id = $3))
       OR ($2::bigint IS NULL AND provider_message_id = $3))
ORDER BY id LIMIT 1
FOR UPDATE;

-- name: advance
-- A later status of a row already recorded as sent: forward only (parley_status_rank), never back from
-- delivered to sent.
-- $1 = queue id, $2 = message status, $3 = error code, $4 = error message, $5 = now
UPDATE message_queue
SET status = parley_queue_status_for($2), error_code = COALESCE($3, error_code),
    last_error = COALESCE($4, last_error), updated_at = now(), status_updated_at = $5
WHERE id = $1 AND status IN ('sent', 'delivered', 'read', 'failed', 'undelivered')
  AND parley_status_rank(parley_queue_status_for($2)) > parley_status_rank(status)
RETURNING id, status;
