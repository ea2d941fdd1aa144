-- Bounded growth: lead histories keep their newest entries, and the retention job (services/retention.py)
-- finds what it deletes through an index instead of scanning the tables.

-- Appends `entry` (a one-element array) to `history`, keeping the newest `keep` elements. Written in SQL
-- so the planner inlines it into the lead upsert; the slice only runs once the history is full.
CREATE FUNCTION parley_append_capped(history jsonb, entry jsonb, keep integer) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_array_length(history) < keep THEN history || entry
                ELSE jsonb_path_query_array(history || entry, '$[last - $n + 1 to last]',
                                            jsonb_build_object('n', keep)) END
$$;

-- Done tasks by age. Partial: pending, running and dead tasks (kept for their dead letters) are not in it,
-- and a task enters it once, when it completes.
CREATE INDEX agent_tasks_done_finished ON agent_tasks (finished_at) WHERE status = 'done';
CREATE INDEX message_statuses_received ON message_statuses (received_at);
