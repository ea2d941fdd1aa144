-- name: lock_timeout
-- A batch that would wait for a row lock gives up instead: it runs again next time.
SET LOCAL lock_timeout = '2s';

-- name: delete_done_tasks
-- At most $2 done tasks finished more than $1 days ago. Dead tasks stay (their dead letters cascade from
-- them), and so do done tasks an operator requeued from a dead letter: deleting one would delete its
-- letter, the record of what failed. Decision log rows keep their entries (agent_task_id becomes NULL).
-- $1 = days, $2 = batch size
WITH doomed AS (
    SELECT t.id FROM agent_tasks t
    WHERE t.status = 'done' AND t.finished_at < now() - make_interval(days => $1)
      AND NOT EXISTS (SELECT 1 FROM event_dead_letters d WHERE d.agent_task_id = t.id)
    ORDER BY t.finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM agent_tasks t USING doomed WHERE t.id = doomed.id RETURNING 1
)
SELECT count(*) FROM gone;

-- name: delete_statuses
-- At most $2 status callbacks received more than $1 days ago. $1 = days, $2 = batch size
WITH doomed AS (
    SELECT id FROM message_statuses
    WHERE received_at < now() - make_interval(days => $1)
    ORDER BY received_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM message_statuses s USING doomed WHERE s.id = doomed.id RETURNING 1
)
SELECT count(*) FROM gone;
