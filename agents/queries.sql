-- name: claim
-- Claim up to $1 tasks: only the oldest live task of each conversation is eligible, so one
-- conversation's work runs in order and never twice at once, across any number of workers.
-- A running task whose lease expired (its worker died) is eligible again, unless that was its last
-- attempt: a task that kills every worker that runs it would otherwise be re-claimed forever and block
-- its conversation, so it is dead-lettered here instead (`buried`), and the conversation's next task
-- becomes eligible for the next claim.
-- $1 = limit, $2 = lease seconds, $3 = worker id
WITH next AS (
    SELECT t.id FROM agent_tasks t
    WHERE t.status IN ('pending', 'running')
      AND ((t.status = 'pending' AND t.run_at <= now()) OR (t.status = 'running' AND t.lease_expires_at < now()))
      AND NOT EXISTS (
          SELECT 1 FROM agent_tasks p
          WHERE p.conversation_id = t.conversation_id AND p.id < t.id AND p.status IN ('pending', 'running'))
    ORDER BY t.priority DESC, t.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
),
taken AS (
    UPDATE agent_tasks t
    SET status = CASE WHEN t.status = 'running' AND t.attempts >= t.max_attempts THEN 'dead' ELSE 'running' END,
        attempts = CASE WHEN t.status = 'running' AND t.attempts >= t.max_attempts THEN t.attempts
                        ELSE t.attempts + 1 END,
        last_error = CASE WHEN t.status = 'running' AND t.attempts >= t.max_attempts
                          THEN format('worker lost on attempt %s of %s (its lease expired)%s', t.attempts,
                                      t.max_attempts, ': earlier error: ' || t.last_error)
                          ELSE t.last_error END,
        locked_by = CASE WHEN t.status = 'running' AND t.attempts >= t.max_attempts THEN t.locked_by ELSE $3 END,
        lease_expires_at = CASE WHEN t.status = 'running' AND t.attempts >= t.max_attempts THEN NULL
                                ELSE now() + make_interval(secs => $2) END,
        finished_at = CASE WHEN t.status = 'running' AND t.attempts >= t.max_attempts THEN now() END,
        updated_at = now()
    FROM next WHERE t.id = next.id
    RETURNING t.id, t.tenant_id, t.conversation_id, t.message_id, t.kind, t.attempts, t.max_attempts, t.payload,
              t.status, t.last_error
),
letters AS (
    INSERT INTO event_dead_letters (tenant_id, agent_task_id, kind, payload, error, attempts)
    SELECT tenant_id, id, kind,
           payload || jsonb_build_object('message_id', message_id, 'conversation_id', conversation_id),
           last_error, attempts
    FROM taken WHERE status = 'dead'
    RETURNING id, agent_task_id
)
SELECT t.id, t.tenant_id, t.conversation_id, t.message_id, t.kind, t.attempts, t.max_attempts, t.payload,
       t.last_error, l.id AS dead_letter_id
FROM taken t LEFT JOIN letters l ON l.agent_task_id = t.id;

-- name: extend_leases
-- $1 = task ids, $2 = worker id, $3 = lease seconds
UPDATE agent_tasks SET lease_expires_at = now() + make_interval(secs => $3)
WHERE id = ANY($1) AND locked_by = $2 AND status = 'running';

-- name: lock_owned
-- Inside the completing transaction: the tasks this claim still owns, locked so nobody can take them
-- over before we commit. $1 = task ids, $2 = worker id, $3 = attempts per task (same order as $1)
SELECT t.id FROM agent_tasks t
JOIN unnest($1::bigint[], $3::int[]) AS c (id, attempts) ON c.id = t.id AND c.attempts = t.attempts
WHERE t.locked_by = $2 AND t.status = 'running'
FOR UPDATE OF t;

-- name: complete
-- $1 = task ids
UPDATE agent_tasks SET status = 'done', finished_at = now(), updated_at = now(), lease_expires_at = NULL,
                       last_error = NULL
WHERE id = ANY($1);

-- name: retry_later
-- $1 = task id, $2 = worker id, $3 = attempts, $4 = delay seconds, $5 = error
UPDATE agent_tasks SET status = 'pending', run_at = now() + make_interval(secs => $4), last_error = $5,
                       lease_expires_at = NULL, locked_by = NULL, updated_at = now()
WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND status = 'running'
RETURNING id;

-- name: bury
-- $1 = task id, $2 = worker id, $3 = attempts, $4 = error
WITH dead AS (
    UPDATE agent_tasks SET status = 'dead', last_error = $4, lease_expires_at = NULL, finished_at = now(),
                           updated_at = now()
    WHERE id = $1 AND locked_by = $2 AND attempts = $3 AND status = 'running'
    RETURNING id, tenant_id, kind, payload, message_id, conversation_id, attempts
)
INSERT INTO event_dead_letters (tenant_id, agent_task_id, kind, payload, error, attempts)
SELECT tenant_id, id, kind,
       payload || jsonb_build_object('message_id', message_id, 'conversation_id', conversation_id),
       $4, attempts
FROM dead
RETURNING id;

-- name: requeue_dead_letter
-- $1 = dead letter id, $2 = operator
WITH letter AS (
    UPDATE event_dead_letters SET status = 'requeued', requeued_at = now(), requeued_by = $2
    WHERE id = $1 AND status = 'dead'
    RETURNING agent_task_id
)
UPDATE agent_tasks t SET status = 'pending', attempts = 0, run_at = now(), last_error = NULL, locked_by = NULL,
                         finished_at = NULL, updated_at = now()
FROM letter WHERE t.id = letter.agent_task_id
RETURNING t.id;
