-- name: pending
-- What Parley still owes a sandbox user, soon: inbound messages its agents have not yet handled and
-- messages on their way out. A row deferred beyond the horizon (quiet hours, a budget) is not coming
-- soon, and an 'unknown' send waits for the reconciler, not for the chat.
-- $1 = tenant_id, $2 = phone (E.164), $3 = horizon in seconds
SELECT
    (SELECT count(*) FROM agent_tasks t
     JOIN conversations c ON c.id = t.conversation_id
     JOIN users u ON u.id = c.user_id
     WHERE u.tenant_id = $1 AND u.phone = $2 AND t.status IN ('pending', 'running')
       AND t.run_at <= now() + make_interval(secs => $3)) AS tasks,
    (SELECT count(*) FROM message_queue q
     JOIN users u ON u.id = q.user_id
     WHERE u.tenant_id = $1 AND u.phone = $2
       AND (q.status = 'sending'
            OR (q.status IN ('queued', 'deferred') AND q.next_attempt_at <= now() + make_interval(secs => $3))))
        AS messages;
