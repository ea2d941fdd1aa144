-- name: load_batch
-- Everything the pipeline needs about each claimed task, in one round trip.
-- $1 = task ids
SELECT t.id AS task_id, t.tenant_id, t.conversation_id, t.message_id,
       m.body, m.message_type, m.keyword, m.created_at AS message_at, m.direction,
       u.id AS user_id, u.phone, u.consent_state, u.profile_name, u.email AS user_email,
       u.time_zone AS user_time_zone, tn.help_text, tn.mask_pii, tn.time_zone AS tenant_time_zone,
       l.id AS lead_id, l.name AS lead_name, l.email AS lead_email, l.language AS lead_language,
       l.intent AS lead_intent, l.tone AS lead_tone, l.urgency AS lead_urgency,
       l.confidence_score AS lead_confidence, l.current_tag AS lead_tag, l.ai_summary AS lead_summary,
       l.requested_time AS lead_requested_time, l.wants AS lead_wants, l.open_question AS lead_open_question,
       s.summary AS conversation_summary, s.up_to_message_id AS summarized_through,
       (SELECT count(*) FROM messages mm
        WHERE mm.conversation_id = t.conversation_id AND mm.id > COALESCE(s.up_to_message_id, 0)
          AND mm.id <= t.message_id) AS unsummarized,
       (SELECT c.id FROM consent_changes c WHERE c.message_id = t.message_id ORDER BY c.id DESC LIMIT 1)
           AS consent_change_id
FROM agent_tasks t
JOIN messages m ON m.id = t.message_id
JOIN conversations cv ON cv.id = t.conversation_id
JOIN users u ON u.id = cv.user_id
JOIN tenants tn ON tn.id = t.tenant_id
LEFT JOIN lead_memory l ON l.tenant_id = t.tenant_id AND l.user_id = u.id
LEFT JOIN LATERAL (
    SELECT summary, up_to_message_id FROM conversation_summaries cs
    WHERE cs.conversation_id = t.conversation_id AND cs.up_to_message_id < t.message_id
    ORDER BY up_to_message_id DESC LIMIT 1
) s ON true
WHERE t.id = ANY($1);

-- name: recent_messages
-- The last messages of a conversation up to and including one message, oldest first.
-- $1 = conversation id, $2 = up to message id, $3 = how many
SELECT id, direction, body, created_at FROM (
    SELECT id, direction, body, created_at FROM messages
    WHERE conversation_id = $1 AND id <= $2 ORDER BY id DESC LIMIT $3
) recent ORDER BY id;

-- name: messages_since
-- $1 = conversation id, $2 = after message id, $3 = up to message id
SELECT id, direction, body, created_at FROM messages
WHERE conversation_id = $1 AND id > $2 AND id <= $3 ORDER BY id;

-- name: insert_summary
-- $1 = tenant_id, $2 = conversation_id, $3 = up_to_message_id, $4 = message_count, $5 = summary,
-- $6 = implementation, $7 = model
INSERT INTO conversation_summaries (tenant_id, conversation_id, up_to_message_id, message_count, summary,
                                    implementation, model)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT ON CONSTRAINT conversation_summaries_upto_key DO NOTHING;
