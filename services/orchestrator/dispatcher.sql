-- name: claim
-- Due rows in priority order (index message_queue_due), each with what the gates read. The user's row
-- is locked FOR SHARE: a STOP (FOR NO KEY UPDATE) cannot commit between this consent read and the
-- row's move to 'sending', and a STOP that committed first is what this locking read returns. The
-- user's budget row is created if missing and locked (ON CONFLICT DO UPDATE locks, and returns the
-- latest committed counters): a second dispatcher that claims another row of the same user waits here
-- until this transaction has written its charge, then reads it. Budget rows are locked in user order
-- so that two claims cannot deadlock on them.
-- $1 = limit, $2 = now (the dispatcher's clock)
WITH next AS (
    SELECT q.id, q.tenant_id, q.user_id, q.conversation_id, q.channel_id, q.class, q.reason, q.status,
           q.priority, q.body, q.template_name, q.template_language, q.template_variables, q.created_at,
           q.expires_at, q.attempts, q.max_attempts, q.next_attempt_at
    FROM message_queue q
    WHERE q.status IN ('queued', 'deferred') AND q.next_attempt_at <= $2
    ORDER BY q.priority DESC, q.next_attempt_at, q.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
),
people AS (
    SELECT u.id, u.tenant_id, u.consent_state, u.time_zone, u.phone, u.quiet_hours_enabled
    FROM users u WHERE u.id IN (SELECT user_id FROM next)
    FOR SHARE
),
budgets AS (
    INSERT INTO user_message_budget AS b (user_id, tenant_id)
    SELECT id, tenant_id FROM people ORDER BY id
    ON CONFLICT (user_id) DO UPDATE SET updated_at = b.updated_at
    RETURNING b.user_id, b.hourly_limit, b.daily_limit, b.hour_start, b.hour_count, b.day_start, b.day_count,
              b.reply_hour_start, b.reply_hour_count, b.last_proactive_at
)
SELECT n.id, n.tenant_id, n.user_id, n.conversation_id, n.channel_id, n.class, n.reason, n.status, n.body,
       n.template_name, n.template_language, n.template_variables, n.created_at, n.expires_at, n.attempts,
       n.max_attempts,
       p.consent_state, p.time_zone, p.phone, p.quiet_hours_enabled,
       b.hourly_limit, b.daily_limit, b.hour_start, b.hour_count, b.day_start, b.day_count,
       b.reply_hour_start, b.reply_hour_count, b.last_proactive_at,
       c.last_inbound_at,
       EXISTS (SELECT 1 FROM message_queue r
               WHERE r.conversation_id = n.conversation_id AND r.class = 'reply' AND r.id > n.id
                 AND r.status IN ('queued', 'deferred', 'sending', 'unknown', 'sent', 'delivered', 'read'))
           AS newer_reply_queued,
       ch.kind AS channel_kind, ch.address AS channel_address, ch.account_sid, ch.messaging_service_sid,
       ch.send_rate, ch.send_burst,
       CASE WHEN ch.parent_channel_id IS NULL THEN ch.credentials ELSE parent.credentials END AS credentials,
       t.time_zone AS tenant_time_zone, t.quiet_hours AS tenant_quiet_hours,
       t.budget_hourly AS tenant_budget_hourly, t.budget_daily AS tenant_budget_daily
FROM next n
JOIN people p ON p.id = n.user_id
JOIN budgets b ON b.user_id = n.user_id
JOIN conversations c ON c.id = n.conversation_id
JOIN channels ch ON ch.id = n.channel_id
LEFT JOIN channels parent ON parent.id = ch.parent_channel_id
JOIN tenants t ON t.id = n.tenant_id
ORDER BY n.priority DESC, n.next_attempt_at, n.id;

-- name: move
-- One statement for a batch's outcomes: each row's move, its verdict, and the budget counters. A row
-- from the claim (still locked by it) moves from queued/deferred; a row after a send moves only while
-- this dispatcher (or, for the reconciler, the row's own locked_by) still holds it at that attempt
-- (the fence: a row whose lease lapsed and was settled, or taken over, is left alone). A row put back in line for a user who opted out meanwhile is canceled
-- instead (the queue's opt-out trigger would refuse the move).
-- $1 = moves, $2 = verdicts, $3 = budget rows (jsonb arrays), $4 = dispatcher id, $5 = now, $6 = lease s,
-- $7 = the moves' queue ids
WITH m AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS x (
        id bigint, attempts integer, claimed boolean, locked_by text, status text, next_attempt_at timestamptz,
        last_error text, error_code text, segments integer, encoding text, sends_template boolean)
),
moved AS (
    UPDATE message_queue q
    SET status = CASE WHEN m.status IN ('queued', 'deferred') AND q.status NOT IN ('queued', 'deferred')
                           AND q.reason <> 'opt_out_confirmation' AND u.consent_state = 'opted_out'
                      THEN 'canceled' ELSE m.status END,
        next_attempt_at = COALESCE(m.next_attempt_at, q.next_attempt_at),
        last_error = CASE WHEN m.status IN ('queued', 'deferred') AND q.status NOT IN ('queued', 'deferred')
                               AND q.reason <> 'opt_out_confirmation' AND u.consent_state = 'opted_out'
                          THEN 'canceled: the user opted out while the send was in flight'
                          ELSE COALESCE(m.last_error, q.last_error) END,
        error_code = COALESCE(m.error_code, q.error_code),
        segments = COALESCE(m.segments, q.segments),
        encoding = COALESCE(m.encoding, q.encoding),
        attempts = CASE WHEN m.status = 'sending' THEN q.attempts + 1
                        -- a send held back by throughput was never attempted
                        WHEN q.status = 'sending' AND m.status = 'deferred' THEN q.attempts - 1
                        ELSE q.attempts END,
        locked_by = CASE WHEN m.status = 'sending' THEN $4
                         WHEN m.status IN ('queued', 'deferred') THEN NULL ELSE q.locked_by END,
        locked_until = CASE WHEN m.status = 'sending' THEN $5::timestamptz + make_interval(secs => $6) END,
        send_started_at = CASE WHEN m.status = 'sending' THEN $5::timestamptz ELSE q.send_started_at END,
        sends_template = CASE WHEN m.status = 'sending' THEN COALESCE(m.sends_template, false)
                              ELSE q.sends_template END,
        updated_at = now(), status_updated_at = $5::timestamptz
    FROM m, users u
    -- q.id = ANY: the planner cannot see how few rows m holds, and would scan the whole queue for them.
    WHERE q.id = ANY($7::bigint[]) AND q.id = m.id AND u.id = q.user_id AND q.attempts = m.attempts
      AND CASE WHEN m.claimed THEN q.status IN ('queued', 'deferred')
               ELSE q.status IN ('sending', 'unknown') AND q.locked_by = COALESCE(m.locked_by, $4) END
    RETURNING q.id, q.tenant_id, q.status, q.attempts
),
verdicts AS (
    INSERT INTO message_queue_verdicts (tenant_id, queue_id, gate, verdict, reason, until, detail, created_at)
    SELECT moved.tenant_id, v.queue_id, v.gate, v.verdict, v.reason, v.until, COALESCE(v.detail, '{}'), $5
    FROM jsonb_to_recordset($2::jsonb) AS v (queue_id bigint, gate text, verdict text, reason text,
                                             until timestamptz, detail jsonb)
    JOIN moved ON moved.id = v.queue_id
),
budgets AS (
    UPDATE user_message_budget b
    SET hour_start = x.hour_start, hour_count = x.hour_count, day_start = x.day_start, day_count = x.day_count,
        reply_hour_start = x.reply_hour_start, reply_hour_count = x.reply_hour_count,
        last_proactive_at = x.last_proactive_at, updated_at = now()
    FROM jsonb_to_recordset($3::jsonb) AS x (
        user_id bigint, hour_start timestamptz, hour_count integer, day_start timestamptz, day_count integer,
        reply_hour_start timestamptz, reply_hour_count integer, last_proactive_at timestamptz)
    WHERE b.user_id = x.user_id
)
SELECT id, status, attempts FROM moved;

-- name: lock_budgets
-- Before a refund: the counters as committed, locked until the refund is written.
-- $1 = user ids
SELECT user_id, hourly_limit, daily_limit, hour_start, hour_count, day_start, day_count, reply_hour_start,
       reply_hour_count, last_proactive_at
FROM user_message_budget WHERE user_id = ANY($1::bigint[]) ORDER BY user_id
FOR UPDATE;

-- name: extend_leases
-- The heartbeat while provider calls are in flight.
-- $1 = queue ids, $2 = dispatcher id, $3 = now, $4 = lease seconds
UPDATE message_queue SET locked_until = $3::timestamptz + make_interval(secs => $4)
WHERE id = ANY($1::bigint[]) AND locked_by = $2 AND status = 'sending';

-- name: lock_owned
-- Before recording sends: lock the rows first, in a statement of their own, so that the next one reads
-- message_statuses with a snapshot taken after any status callback that locked them before us
-- committed (services/orchestrator/reconcile.py takes the same row lock first).
-- $1 = queue ids
SELECT id FROM message_queue WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE;

-- name: record_sent
-- Sends the provider accepted: the row becomes 'sent' (or what a callback that came first already
-- said), gets one outbound `messages` row in its conversation, and the conversation's last_message_at
-- moves. Fenced: a dispatcher's result only while it holds the row at that attempt ($2), the
-- reconciler's ($2 NULL) only for an 'unknown' row. The messages row is inserted once per provider id.
-- $1 = rows (jsonb: id, attempts, provider_message_id, provider_status, error_code, segments, body, template),
-- $2 = dispatcher id or NULL, $3 = now, $4 = verdict reason prefix, $5 = the rows' queue ids (as in move)
WITH r AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS x (
        id bigint, attempts integer, provider_message_id text, provider_status text, error_code text,
        segments integer, body text, template text)
),
rows AS (
    SELECT q.id, q.tenant_id, q.conversation_id, q.user_id, q.class, r.provider_message_id,
           COALESCE(r.body, q.body) AS body, r.template,
           COALESCE(r.segments, q.segments) AS segments,
           CASE ch.kind WHEN 'whatsapp_cloud' THEN 'meta' ELSE 'twilio' END AS provider,
           CASE WHEN s.status IS NOT NULL AND parley_status_rank(s.status) > parley_status_rank(r.provider_status)
                THEN s.status ELSE r.provider_status END AS best_status,
           COALESCE(s.error_code, r.error_code) AS error_code, s.error_message
    FROM r
    JOIN message_queue q ON q.id = ANY($5::bigint[]) AND q.id = r.id AND q.attempts = r.attempts
         AND CASE WHEN $2::text IS NULL THEN q.status = 'unknown'
                  ELSE q.status IN ('sending', 'unknown') AND q.locked_by = $2 END
    JOIN channels ch ON ch.id = q.channel_id
    LEFT JOIN LATERAL (
        SELECT st.status, st.error_code, st.error_message FROM message_statuses st
        WHERE st.provider = CASE ch.kind WHEN 'whatsapp_cloud' THEN 'meta' ELSE 'twilio' END
          AND st.provider_message_id = r.provider_message_id AND st.tenant_id = q.tenant_id
        ORDER BY parley_status_rank(st.status) DESC, st.id DESC LIMIT 1
    ) s ON true
),
moved AS (
    UPDATE message_queue q
    SET status = parley_queue_status_for(rows.best_status), provider_message_id = rows.provider_message_id,
        sent_at = $3::timestamptz, segments = rows.segments, locked_until = NULL,
        error_code = COALESCE(rows.error_code, q.error_code), last_error = COALESCE(rows.error_message, q.last_error),
        updated_at = now(), status_updated_at = $3::timestamptz
    FROM rows WHERE q.id = rows.id
    RETURNING q.id, q.tenant_id, q.status
),
verdicts AS (
    INSERT INTO message_queue_verdicts (tenant_id, queue_id, gate, verdict, reason, detail, created_at)
    SELECT rows.tenant_id, rows.id, CASE WHEN $2::text IS NULL THEN 'reconcile' ELSE 'send' END, 'sent',
           left($4 || rows.provider_message_id, 200),
           jsonb_build_object('provider_message_id', rows.provider_message_id, 'status', moved.status), $3
    FROM rows JOIN moved ON moved.id = rows.id
),
-- Spacing counts from when the provider accepted the last proactive message, not from its claim: a
-- claim's sends leave over a second or two, so two messages claimed 30 s apart could arrive 28 s apart
-- (bench/dispatch.py found such pairs). The next claim reads this row under its lock.
spaced AS (
    UPDATE user_message_budget b
    SET last_proactive_at = GREATEST(b.last_proactive_at, $3::timestamptz), updated_at = now()
    FROM rows JOIN moved ON moved.id = rows.id
    WHERE b.user_id = rows.user_id AND rows.class IN ('transactional', 'marketing')
),
outbound AS (
    INSERT INTO messages (tenant_id, conversation_id, direction, provider, provider_message_id, message_type,
                          body, details, status, error_code, error_message, segments, provider_sent_at,
                          status_updated_at)
    SELECT rows.tenant_id, rows.conversation_id, 'outbound', rows.provider, rows.provider_message_id, 'text',
           rows.body,
           jsonb_strip_nulls(jsonb_build_object('queue_id', rows.id, 'template', rows.template)),
           rows.best_status,
           rows.error_code, rows.error_message, rows.segments, $3, $3
    FROM rows JOIN moved ON moved.id = rows.id
    ON CONFLICT ON CONSTRAINT messages_provider_message_id_key DO NOTHING
    RETURNING conversation_id
),
touched AS (
    UPDATE conversations c SET last_message_at = greatest(c.last_message_at, $3::timestamptz)
    FROM (SELECT DISTINCT conversation_id FROM outbound) o WHERE c.id = o.conversation_id
)
SELECT id, status FROM moved;

-- name: lock_user
-- Before a provider's opt-out is recorded as a consent change: the user's consent as committed.
-- $1 = user id
SELECT consent_state FROM users WHERE id = $1 FOR NO KEY UPDATE;

-- name: next_due
-- When the earliest waiting row becomes due (the idle dispatcher's sleep ends there at the latest).
-- $1 = now
SELECT min(next_attempt_at) FROM message_queue WHERE status IN ('queued', 'deferred') AND next_attempt_at > $1;
