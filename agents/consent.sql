-- name: lock_users
-- The users whose consent a batch acts on, locked until it commits. FOR NO KEY UPDATE is the lock a
-- consent change (an UPDATE of the row) takes, so no STOP or START can commit between these checks
-- and the batch's commit; it leaves foreign key checks (FOR KEY SHARE) free. In id order, so batches
-- sharing users cannot deadlock.
-- $1 = user ids
SELECT id FROM users WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE;

-- name: consent_now
-- Each message's user's consent as committed now (run after lock_users, so it sees every change that
-- committed while the lock waited), with the user's latest change and whether that change was
-- recorded after the message: a change carries its message (keyword, classifier), or else only its
-- time (operator). A user's changes are numbered under that user's row lock, so the latest is the
-- highest id.
-- $1 = message ids, $2 = their users' ids, in the same order
SELECT b.message_id, u.consent_state, c.id AS change_id, c.state AS change_state,
       COALESCE(c.message_id > b.message_id OR (c.message_id IS NULL AND c.created_at > m.created_at),
                false) AS change_is_newer
FROM unnest($1::bigint[], $2::bigint[]) AS b (message_id, user_id)
JOIN users u ON u.id = b.user_id
JOIN messages m ON m.id = b.message_id
LEFT JOIN LATERAL (
    SELECT id, state, message_id, created_at FROM consent_changes cc
    WHERE cc.user_id = u.id ORDER BY cc.id DESC LIMIT 1
) c ON true;
