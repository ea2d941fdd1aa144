-- name: load_many
-- Every asked tenant's profile with its FAQ, in one round trip; a tenant without a profile row has
-- the defaults. $1 = tenant ids
SELECT t.id AS tenant_id, t.name AS tenant_name, t.help_text, p.business_name, p.industry, p.primary_service,
       p.booking_link, p.tagline, COALESCE(p.tone, 'Friendly') AS tone, COALESCE(p.language, 'en') AS language,
       COALESCE(p.followup_speed, 'Instant') AS followup_speed,
       COALESCE(p.ai_personalized_reply, true) AS ai_personalized_reply,
       p.opening_hours, p.handoff_message, p.updated_at,
       COALESCE((SELECT jsonb_agg(jsonb_build_object('id', f.id, 'question', f.question, 'answer', f.answer,
                                                     'keywords', to_jsonb(f.keywords)) ORDER BY f.position)
                 FROM faq_entries f WHERE f.tenant_id = t.id), '[]'::jsonb) AS faq
FROM tenants t LEFT JOIN business_profiles p ON p.tenant_id = t.id
WHERE t.id = ANY($1::bigint[]);

-- name: ensure_profile
-- $1 = tenant_id
INSERT INTO business_profiles (tenant_id) SELECT id FROM tenants WHERE id = $1
ON CONFLICT (tenant_id) DO NOTHING;

-- name: delete_faq
-- $1 = tenant_id
DELETE FROM faq_entries WHERE tenant_id = $1;

-- name: insert_faq
-- $1 = tenant_id, $2 = questions, $3 = answers, $4 = keywords (each a JSON array of strings)
INSERT INTO faq_entries (tenant_id, position, question, answer, keywords)
SELECT $1, e.ord - 1, e.question, e.answer,
       ARRAY(SELECT jsonb_array_elements_text(e.keywords::jsonb))
FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS e (question, answer, keywords, ord);

-- name: set_profile
-- Only the fields named change; NULL resets a field to its default.
-- $1 = tenant_id, then pairs (set?, value): $2/$3 business_name, $4/$5 industry, $6/$7 primary_service,
-- $8/$9 booking_link, $10/$11 tagline, $12/$13 tone, $14/$15 language, $16/$17 followup_speed,
-- $18/$19 ai_personalized_reply, $20/$21 opening_hours, $22/$23 handoff_message
UPDATE business_profiles SET
    business_name = CASE WHEN $2::boolean THEN $3::text ELSE business_name END,
    industry = CASE WHEN $4::boolean THEN $5::text ELSE industry END,
    primary_service = CASE WHEN $6::boolean THEN $7::text ELSE primary_service END,
    booking_link = CASE WHEN $8::boolean THEN $9::text ELSE booking_link END,
    tagline = CASE WHEN $10::boolean THEN $11::text ELSE tagline END,
    tone = CASE WHEN $12::boolean THEN COALESCE($13::text, 'Friendly') ELSE tone END,
    language = CASE WHEN $14::boolean THEN COALESCE($15::text, 'en') ELSE language END,
    followup_speed = CASE WHEN $16::boolean THEN COALESCE($17::text, 'Instant') ELSE followup_speed END,
    ai_personalized_reply = CASE WHEN $18::boolean THEN COALESCE($19::boolean, true) ELSE ai_personalized_reply END,
    opening_hours = CASE WHEN $20::boolean THEN $21::text ELSE opening_hours END,
    handoff_message = CASE WHEN $22::boolean THEN $23::text ELSE handoff_message END,
    updated_at = now()
WHERE tenant_id = $1
RETURNING tenant_id;
