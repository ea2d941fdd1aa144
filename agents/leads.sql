-- name: lock_leads
-- The current state of the batch's leads, locked until the batch commits so changes are computed
-- against what is really there. $1 = tenant ids, $2 = user ids
SELECT l.id, l.tenant_id, l.user_id, l.name, l.email, l.language, l.intent, l.tone, l.urgency, l.confidence_score,
       l.requested_time, l.wants, l.open_question, l.intent_message_id
FROM lead_memory l
JOIN unnest($1::bigint[], $2::bigint[]) AS k (tenant_id, user_id) ON k.tenant_id = l.tenant_id AND k.user_id = l.user_id
ORDER BY l.id
FOR UPDATE OF l;

-- name: upsert_leads
-- One row per (tenant, user); histories append {value, timestamp} only when the value changes, and keep
-- the newest $13 entries.
-- $1 = tenant ids, $2 = user ids, $3 = names, $4 = emails, $5 = languages, $6 = ai summaries, $7 = intents,
-- $8 = tones, $9 = urgencies, $10 = confidences, $11 = is_test flags, $12 = message ids, $13 = history length,
-- $14 = requested times, $15 = wants, $16 = open questions, $17 = intent message ids (already merged with the
-- locked row by agents/memory.py: written as given)
INSERT INTO lead_memory AS l (tenant_id, user_id, name, email, language, ai_summary, intent, tone, urgency,
                              confidence_score, tone_history, urgency_history, confidence_history, is_test,
                              last_message_id, requested_time, wants, open_question, intent_message_id)
SELECT i.tenant_id, i.user_id, i.name, i.email, i.language, i.ai_summary, i.intent, i.tone, i.urgency, i.confidence,
       jsonb_build_array(jsonb_build_object('value', i.tone, 'timestamp', now())),
       jsonb_build_array(jsonb_build_object('value', i.urgency, 'timestamp', now())),
       jsonb_build_array(jsonb_build_object('value', i.confidence, 'timestamp', now())),
       i.is_test, i.message_id, i.requested_time, i.wants, i.open_question, i.intent_message_id
FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::numeric[], $11::boolean[], $12::bigint[], $14::jsonb[], $15::text[], $16::text[],
            $17::bigint[])
     AS i (tenant_id, user_id, name, email, language, ai_summary, intent, tone, urgency, confidence, is_test,
           message_id, requested_time, wants, open_question, intent_message_id)
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
        THEN parley_append_capped(l.tone_history, EXCLUDED.tone_history, $13) ELSE l.tone_history END,
    urgency_history = CASE WHEN l.urgency IS DISTINCT FROM EXCLUDED.urgency
        THEN parley_append_capped(l.urgency_history, EXCLUDED.urgency_history, $13) ELSE l.urgency_history END,
    confidence_history = CASE WHEN l.confidence_score IS DISTINCT FROM EXCLUDED.confidence_score
        THEN parley_append_capped(l.confidence_history, EXCLUDED.confidence_history, $13)
        ELSE l.confidence_history END,
    is_test = l.is_test OR EXCLUDED.is_test,
    last_message_id = EXCLUDED.last_message_id,
    requested_time = EXCLUDED.requested_time,
    wants = EXCLUDED.wants,
    open_question = EXCLUDED.open_question,
    intent_message_id = EXCLUDED.intent_message_id,
    updated_at = now()
RETURNING l.id, l.tenant_id, l.user_id;

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
