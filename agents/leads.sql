-- name: upsert_lead
-- Histories append {value, timestamp} only when the value changes; the row lock taken by the upsert
-- makes that comparison safe even when two conversations of one user update the lead at once.
-- $1 = tenant_id, $2 = user_id, $3 = name, $4 = email, $5 = language, $6 = ai_summary, $7 = intent,
-- $8 = tone, $9 = urgency, $10 = confidence, $11 = is_test, $12 = message id
WITH old AS (
    SELECT id, name, email, language, intent, tone, urgency, confidence_score
    FROM lead_memory WHERE tenant_id = $1 AND user_id = $2
)
INSERT INTO lead_memory AS l (tenant_id, user_id, name, email, language, ai_summary, intent, tone, urgency,
                              confidence_score, tone_history, urgency_history, confidence_history, is_test,
                              last_message_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
        jsonb_build_array(jsonb_build_object('value', $8::text, 'timestamp', now())),
        jsonb_build_array(jsonb_build_object('value', $9::text, 'timestamp', now())),
        jsonb_build_array(jsonb_build_object('value', $10::numeric, 'timestamp', now())),
        $11, $12)
ON CONFLICT ON CONSTRAINT lead_memory_tenant_user_key DO UPDATE SET
    name = COALESCE(EXCLUDED.name, l.name),
    email = COALESCE(EXCLUDED.email, l.email),
    language = COALESCE(EXCLUDED.language, l.language),
    ai_summary = COALESCE(EXCLUDED.ai_summary, l.ai_summary),
    intent = EXCLUDED.intent,
    tone = EXCLUDED.tone,
    urgency = EXCLUDED.urgency,
    confidence_score = EXCLUDED.confidence_score,
    tone_history = CASE WHEN l.tone IS DISTINCT FROM EXCLUDED.tone
        THEN l.tone_history || EXCLUDED.tone_history ELSE l.tone_history END,
    urgency_history = CASE WHEN l.urgency IS DISTINCT FROM EXCLUDED.urgency
        THEN l.urgency_history || EXCLUDED.urgency_history ELSE l.urgency_history END,
    confidence_history = CASE WHEN l.confidence_score IS DISTINCT FROM EXCLUDED.confidence_score
        THEN l.confidence_history || EXCLUDED.confidence_history ELSE l.confidence_history END,
    is_test = l.is_test OR EXCLUDED.is_test,
    last_message_id = EXCLUDED.last_message_id,
    updated_at = now()
RETURNING l.id, (SELECT row_to_json(old) FROM old) AS previous;

-- name: insert_action
-- $1 = tenant_id, $2 = lead id, $3 = action_type, $4 = tag, $5 = previous_tag, $6 = conversion_outcome,
-- $7 = reversion_reason, $8 = changes, $9 = actor, $10 = message id, $11 = is_test
INSERT INTO lead_actions (tenant_id, lead_id, action_type, tag, previous_tag, conversion_outcome,
                          reversion_reason, changes, actor, message_id, is_test)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11);

-- name: lock_lead
-- $1 = lead id
SELECT id, tenant_id, user_id, current_tag, is_test FROM lead_memory WHERE id = $1 FOR UPDATE;

-- name: set_tag
-- $1 = lead id, $2 = tag
UPDATE lead_memory SET current_tag = $2, updated_at = now() WHERE id = $1;

-- name: lead_by_id
-- $1 = lead id
SELECT l.*, u.phone, u.consent_state FROM lead_memory l JOIN users u ON u.id = l.user_id WHERE l.id = $1;

-- name: leads_by_phone
-- $1 = phone, $2 = after id, $3 = limit
SELECT l.*, u.phone, u.consent_state FROM lead_memory l JOIN users u ON u.id = l.user_id
WHERE u.phone = $1 AND l.id > $2 ORDER BY l.id LIMIT $3;

-- name: lead_actions
-- $1 = lead id
SELECT id, action_type, tag, previous_tag, conversion_outcome, reversion_reason, changes, actor, message_id,
       is_test, created_at
FROM lead_actions WHERE lead_id = $1 ORDER BY id;
