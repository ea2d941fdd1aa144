-- name: insert_inbound_batch
-- Every inbound message, group-committed: many webhooks' messages in one statement and one commit.
-- Senders are found as each message alone would find them (by phone; else by BSUID, a user with a
-- phone first; else by username; a phone arriving with the BSUID of a phone-less user is attached to
-- it) or created; then profile refresh, conversation, message, message.received event and agent task;
-- for a keyword, its consent change, consent_changes row and consent.* event, or help.requested.
-- A redelivery (already stored, or earlier in the same batch) touches nothing: message_id NULL.
-- $1 = a JSON array, one object per message: n (its place in the batch), s (its sender's place: equal
-- for messages whose sender fields are equal), tenant_id, channel_id, provider, provider_message_id,
-- message_type, body, media, details, segments, raw, provider_sent_at, max_attempts, phone, time_zone,
-- profile_name, wa_id, wa_user_id, wa_parent_user_id, wa_username, kw (the keyword matched: opt_out,
-- opt_in, help or yes), word (as typed, normalised); an absent key is NULL. One JSON document costs
-- the client a fraction of twenty typed arrays, and the JSON columns arrive already parsed.
--
-- Locks are taken in phases, each in a sorted order, and the `(SELECT count(*) ...) >= 0` gates make
-- a phase finish before the next begins: users this batch changes (by id), users it creates (by key),
-- conversations (by tenant, user, channel), then messages. Concurrent batches, in lanes or processes,
-- therefore never wait on each other in a cycle. Whatever the snapshot could not show (a user or a
-- keyword message committed concurrently) fails the statement through parley_retry_if (migration
-- 0008), and the batcher runs it again.
WITH input AS (
    SELECT * FROM json_to_recordset($1::json)
        AS i (n int, s int, tenant_id bigint, channel_id bigint, provider text, provider_message_id text,
              message_type text, body text, media jsonb, details jsonb, segments int, raw jsonb,
              provider_sent_at timestamptz, max_attempts int, phone text, time_zone text, profile_name text,
              wa_id text, wa_user_id text, wa_parent_user_id text, wa_username text, kw text, word text)
), fresh AS (
    -- One row per new provider message id (a batch may carry a redelivery of its own message).
    -- A scalar subquery, not NOT EXISTS: one index probe per message, never a scan of messages.
    SELECT DISTINCT ON (i.provider, i.provider_message_id) i.* FROM input i
    WHERE (SELECT true FROM messages m
           WHERE m.provider = i.provider AND m.provider_message_id = i.provider_message_id) IS NULL
    ORDER BY i.provider, i.provider_message_id, i.n
), found AS MATERIALIZED (
    -- One row per sender, found as its message alone would find it: its user's row as it is. Only the
    -- lookup that applies runs, once per sender (materialized: inlined, the planner would repeat the
    -- CASE at every use of its result).
    SELECT d.*, (d.cur).id AS known_id, (d.cur).profile_name AS cur_profile_name, (d.cur).wa_id AS cur_wa_id,
           (d.cur).wa_user_id AS cur_wa_user_id, (d.cur).wa_parent_user_id AS cur_wa_parent_user_id,
           (d.cur).wa_username AS cur_wa_username
    FROM (SELECT d.*, CASE
              WHEN d.phone IS NOT NULL THEN
                  (SELECT u FROM users u WHERE u.tenant_id = d.tenant_id AND u.phone = d.phone)
              WHEN d.wa_user_id IS NOT NULL THEN
                  (SELECT u FROM users u WHERE u.tenant_id = d.tenant_id AND u.wa_user_id = d.wa_user_id
                   ORDER BY (u.phone IS NOT NULL) DESC, u.id LIMIT 1)
              ELSE (SELECT u FROM users u WHERE u.tenant_id = d.tenant_id AND u.wa_username = d.wa_username
                    ORDER BY (u.phone IS NOT NULL) DESC, u.id LIMIT 1)
              END AS cur
          FROM (SELECT DISTINCT ON (f.s) f.s, f.tenant_id, f.phone, f.wa_user_id, f.wa_username
                FROM fresh f ORDER BY f.s) d
          OFFSET 0) d
), sender AS MATERIALIZED (
    -- A phone with the BSUID of a phone-less user is attached to that user. who: the user's id when it
    -- exists, else the key of the unique index that will hold the new one.
    SELECT d.s, d.tenant_id, d.cur_profile_name, d.cur_wa_id, d.cur_wa_user_id, d.cur_wa_parent_user_id,
           d.cur_wa_username, COALESCE(d.known_id, d.attach_id) AS existing_id, d.attach_id IS NOT NULL AS attach,
           COALESCE(COALESCE(d.known_id, d.attach_id)::text,
                    CASE WHEN d.phone IS NOT NULL THEN 'p' || d.phone
                         WHEN d.wa_user_id IS NOT NULL THEN 'b' || d.wa_user_id ELSE 'u' || d.wa_username END) AS who
    FROM (SELECT d.*, CASE WHEN d.known_id IS NULL AND d.phone IS NOT NULL AND d.wa_user_id IS NOT NULL THEN
                     (SELECT u.id FROM users u WHERE u.tenant_id = d.tenant_id AND u.wa_user_id = d.wa_user_id
                                                 AND u.phone IS NULL) END AS attach_id
          FROM found d OFFSET 0) d  -- OFFSET 0: attach_id is used thrice; it is looked up once
), sent AS (
    -- refresh: the message changes its known user's row (a phone attached, a profile field changed).
    SELECT f.*, d.who, d.existing_id, d.attach,
           d.attach OR (f.profile_name IS NOT NULL AND f.profile_name IS DISTINCT FROM d.cur_profile_name)
                    OR (f.wa_id IS NOT NULL AND f.wa_id IS DISTINCT FROM d.cur_wa_id)
                    OR (f.wa_user_id IS NOT NULL AND f.wa_user_id IS DISTINCT FROM d.cur_wa_user_id)
                    OR (f.wa_parent_user_id IS NOT NULL AND f.wa_parent_user_id IS DISTINCT FROM d.cur_wa_parent_user_id)
                    OR (f.wa_username IS NOT NULL AND f.wa_username IS DISTINCT FROM d.cur_wa_username) AS refresh
    FROM fresh f JOIN sender d ON d.s = f.s
), person AS (
    -- A user as its messages leave it: each field's latest value, as one message after another would.
    SELECT tenant_id, who, existing_id, bool_or(attach) AS attach, bool_or(refresh) AS refresh,
           (array_agg(phone ORDER BY n DESC) FILTER (WHERE phone IS NOT NULL))[1] AS phone,
           (array_agg(time_zone ORDER BY n DESC) FILTER (WHERE time_zone IS NOT NULL))[1] AS time_zone,
           (array_agg(profile_name ORDER BY n DESC) FILTER (WHERE profile_name IS NOT NULL))[1] AS profile_name,
           (array_agg(wa_id ORDER BY n DESC) FILTER (WHERE wa_id IS NOT NULL))[1] AS wa_id,
           (array_agg(wa_user_id ORDER BY n DESC) FILTER (WHERE wa_user_id IS NOT NULL))[1] AS wa_user_id,
           (array_agg(wa_parent_user_id ORDER BY n DESC)
                FILTER (WHERE wa_parent_user_id IS NOT NULL))[1] AS wa_parent_user_id,
           (array_agg(wa_username ORDER BY n DESC) FILTER (WHERE wa_username IS NOT NULL))[1] AS wa_username,
           COALESCE(bool_or(kw IN ('opt_out', 'opt_in', 'yes')), false) AS consents
    FROM sent GROUP BY tenant_id, who, existing_id
), locked AS (
    -- The known users this batch changes, read as they are now, not as the snapshot has them: a consent
    -- change committed since the statement began is what a keyword here moves on from. NO KEY UPDATE
    -- leaves the foreign-key checks of other batches' conversations and messages unblocked.
    SELECT u.id, u.consent_state, p.refresh FROM users u JOIN person p ON p.existing_id = u.id
    WHERE (p.consents OR p.refresh) AND (NOT p.attach OR u.phone IS NULL)
    ORDER BY u.id FOR NO KEY UPDATE OF u
), keyed AS (
    -- The state each keyword finds: that of the last STOP/START before it in the batch (or the user's
    -- own), turned opted_in by a YES after an opt-out. last_reset packs that message's n and its kind.
    SELECT w.n, w.tenant_id, w.who, w.kw, w.word,
           CASE WHEN b.state = 'opted_out' AND w.last_yes > COALESCE(w.last_reset / 2, 0) THEN 'opted_in'
                ELSE b.state END AS prior
    FROM (SELECT s.n, s.tenant_id, s.who, s.existing_id, s.kw, s.word,
                 max(s.n * 2 + (s.kw = 'opt_in')::int) FILTER (WHERE s.kw IN ('opt_out', 'opt_in')) OVER w
                     AS last_reset,
                 max(s.n) FILTER (WHERE s.kw = 'yes') OVER w AS last_yes
          FROM sent s WHERE s.kw IS NOT NULL
          WINDOW w AS (PARTITION BY s.tenant_id, s.who ORDER BY s.n
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) w
    LEFT JOIN locked l ON l.id = w.existing_id
    CROSS JOIN LATERAL (SELECT CASE WHEN w.last_reset IS NULL THEN COALESCE(l.consent_state, 'unknown')
                                    WHEN w.last_reset % 2 = 1 THEN 'opted_in' ELSE 'opted_out' END AS state) b
), decided AS (
    -- STOP and START are stored as keywords even when they change nothing; YES only when it opts in.
    SELECT n, tenant_id, who, word,
           CASE WHEN kw <> 'yes' THEN kw WHEN prior = 'opted_out' THEN 'opt_in' END AS keyword,
           CASE WHEN kw = 'opt_out' AND prior <> 'opted_out' THEN 'opted_out'
                WHEN kw = 'opt_in' AND prior <> 'opted_in' THEN 'opted_in'
                WHEN kw = 'yes' AND prior = 'opted_out' THEN 'opted_in' END AS consent
    FROM keyed
), final AS (
    -- A user's state after its keywords: that of its last change.
    SELECT DISTINCT ON (tenant_id, who) tenant_id, who, consent FROM decided
    WHERE consent IS NOT NULL ORDER BY tenant_id, who, n DESC
), born AS (
    -- New users, in the order of their unique keys. A key taken meanwhile by another batch conflicts
    -- here and fails the statement below (its row is not visible to this one).
    INSERT INTO users (tenant_id, phone, wa_id, wa_user_id, wa_parent_user_id, wa_username, profile_name,
                       time_zone, consent_state, consent_updated_at)
    SELECT p.tenant_id, p.phone, p.wa_id, p.wa_user_id, p.wa_parent_user_id, p.wa_username, p.profile_name,
           p.time_zone, COALESCE(f.consent, 'unknown'), CASE WHEN f.consent IS NOT NULL THEN now() END
    FROM person p LEFT JOIN final f ON f.tenant_id = p.tenant_id AND f.who = p.who
    WHERE p.existing_id IS NULL AND (SELECT count(*) FROM locked) >= 0
    ORDER BY p.tenant_id, p.who
    ON CONFLICT DO NOTHING
    RETURNING id, tenant_id,
              CASE WHEN phone IS NOT NULL THEN 'p' || phone
                   WHEN wa_user_id IS NOT NULL THEN 'b' || wa_user_id ELSE 'u' || wa_username END AS who
), resolved AS (
    SELECT p.tenant_id, p.who, p.consents,
           COALESCE(l.id, b.id, CASE WHEN NOT (p.consents OR p.refresh) THEN p.existing_id END) AS user_id
    FROM person p
    LEFT JOIN locked l ON l.id = p.existing_id
    LEFT JOIN born b ON p.existing_id IS NULL AND b.tenant_id = p.tenant_id AND b.who = p.who
    WHERE (SELECT count(*) FROM born) >= 0
), placed AS (
    SELECT s.*, r.user_id, r.consents FROM sent s JOIN resolved r ON r.tenant_id = s.tenant_id AND r.who = s.who
), touched AS (
    UPDATE users u SET profile_name = COALESCE(p.profile_name, u.profile_name), wa_id = COALESCE(p.wa_id, u.wa_id),
                       wa_user_id = COALESCE(p.wa_user_id, u.wa_user_id),
                       wa_parent_user_id = COALESCE(p.wa_parent_user_id, u.wa_parent_user_id),
                       wa_username = COALESCE(p.wa_username, u.wa_username),
                       phone = CASE WHEN p.attach THEN p.phone ELSE u.phone END,
                       time_zone = CASE WHEN p.attach THEN COALESCE(u.time_zone, p.time_zone) ELSE u.time_zone END,
                       consent_state = COALESCE(f.consent, u.consent_state),
                       consent_updated_at = CASE WHEN f.consent IS NOT NULL THEN now() ELSE u.consent_updated_at END,
                       updated_at = now()
    FROM person p JOIN locked l ON l.id = p.existing_id
    LEFT JOIN final f ON f.tenant_id = p.tenant_id AND f.who = p.who
    WHERE u.id = l.id AND (l.refresh OR f.consent IS NOT NULL)
), conv AS (
    INSERT INTO conversations (tenant_id, user_id, channel_id, last_message_at, last_inbound_at)
    SELECT DISTINCT p.tenant_id, p.user_id, p.channel_id, now(), now()
    FROM placed p WHERE p.user_id IS NOT NULL
    ORDER BY 1, 2, 3
    ON CONFLICT ON CONSTRAINT conversations_tenant_user_channel_key
    DO UPDATE SET last_message_at = now(), last_inbound_at = now(), status = 'active'
    RETURNING id, tenant_id, user_id, channel_id
), msg AS (
    INSERT INTO messages (tenant_id, conversation_id, direction, provider, provider_message_id,
                          message_type, body, media, details, status, segments, keyword, raw, provider_sent_at)
    SELECT s.tenant_id, c.id, 'inbound', s.provider, s.provider_message_id, s.message_type, s.body, s.media,
           s.details, 'received', s.segments, d.keyword, s.raw, s.provider_sent_at
    FROM placed s
    JOIN conv c ON c.tenant_id = s.tenant_id AND c.user_id = s.user_id AND c.channel_id = s.channel_id
    LEFT JOIN decided d ON d.n = s.n
    WHERE (SELECT count(*) FROM conv) >= 0
    ORDER BY s.n  -- ids in arrival order: the agents work through a conversation in id order
    ON CONFLICT ON CONSTRAINT messages_provider_message_id_key DO NOTHING
    RETURNING id, tenant_id, conversation_id, provider, provider_message_id, keyword
), stored AS (
    SELECT m.id, m.tenant_id, m.conversation_id, m.keyword, s.n, s.provider, s.channel_id, s.message_type,
           s.max_attempts, s.word, s.user_id, d.consent
    FROM msg m
    JOIN placed s ON s.provider = m.provider AND s.provider_message_id = m.provider_message_id
    LEFT JOIN decided d ON d.n = s.n
), history AS (
    INSERT INTO consent_changes (tenant_id, user_id, state, source, keyword, message_id, changed_by)
    SELECT tenant_id, user_id, consent, 'keyword', word, id, 'user' FROM stored WHERE consent IS NOT NULL
    ORDER BY n
), event AS (
    INSERT INTO events (tenant_id, type, conversation_id, user_id, message_id, payload)
    SELECT e.tenant_id, e.type, e.conversation_id, e.user_id, e.id, e.payload FROM (
        SELECT st.tenant_id, st.conversation_id, st.user_id, st.id, st.n, 0 AS k, 'message.received' AS type,
               jsonb_build_object('provider', st.provider, 'channel_id', st.channel_id, 'type', st.message_type,
                                  'keyword', st.keyword) AS payload
        FROM stored st
        UNION ALL
        SELECT st.tenant_id, st.conversation_id, st.user_id, st.id, st.n, 1, 'consent.' || st.consent,
               jsonb_build_object('source', 'keyword', 'keyword', st.word)
        FROM stored st WHERE st.consent IS NOT NULL
        UNION ALL
        SELECT st.tenant_id, st.conversation_id, st.user_id, st.id, st.n, 1, 'help.requested',
               jsonb_build_object('keyword', st.word)
        FROM stored st WHERE st.keyword = 'help'
    ) e ORDER BY e.n, e.k
), task AS (
    INSERT INTO agent_tasks (tenant_id, conversation_id, message_id, kind, max_attempts)
    SELECT tenant_id, conversation_id, id, 'process_message', max_attempts FROM stored ORDER BY id
), guard AS (
    -- A sender created meanwhile by another batch, or a known user's row changed under it, leaves a
    -- user unresolved; a keyword user's message stored meanwhile would leave its consent decided on a
    -- sequence that never happened. Either way: run again.
    SELECT parley_retry_if(
        EXISTS (SELECT 1 FROM resolved WHERE user_id IS NULL)
        OR EXISTS (SELECT 1 FROM placed s
                   WHERE s.consents AND NOT EXISTS (
                       SELECT 1 FROM msg m
                       WHERE m.provider = s.provider AND m.provider_message_id = s.provider_message_id)),
        'a sender or keyword of this batch was written by another transaction') AS ok
)
SELECT i.n, st.user_id, st.conversation_id, st.id AS message_id, st.keyword, st.consent
FROM input i CROSS JOIN guard g LEFT JOIN stored st ON st.n = i.n
WHERE g.ok;

-- name: set_consent
-- $1 = user id, $2 = state, $3 = source, $4 = keyword, $5 = message id, $6 = changed_by
WITH u AS (
    UPDATE users SET consent_state = $2, consent_updated_at = now(), updated_at = now()
    WHERE id = $1 RETURNING id, tenant_id
)
INSERT INTO consent_changes (tenant_id, user_id, state, source, keyword, message_id, changed_by)
SELECT u.tenant_id, u.id, $2, $3, $4, $5, $6 FROM u
RETURNING id;

-- name: set_intents
-- Each message keeps its own intent (lead_memory.intent keeps the lead's strongest).
-- $1 = message ids, $2 = intents
UPDATE messages m SET intent = i.intent
FROM unnest($1::bigint[], $2::text[]) AS i (id, intent)
WHERE m.id = i.id;
