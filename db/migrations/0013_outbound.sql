-- Outbound: message_queue becomes the one road out. Every row carries its class, its sender channel,
-- its body or WhatsApp template, when it may go and until when, its lease while a provider call is in
-- flight, and what the provider said. Every gate decision is kept in message_queue_verdicts;
-- user_message_budget holds the per-user limits and the counters the dispatcher moves, atomically, in
-- the transaction that claims a row.

-- Tenant defaults the dispatcher reads; NULL means "the settings' default" (PARLEY_QUIET_HOURS,
-- PARLEY_BUDGET_HOURLY, PARLEY_BUDGET_DAILY, PARLEY_TIME_ZONE). quiet_hours '' means none at all.
ALTER TABLE tenants
    ADD COLUMN time_zone text,
    ADD COLUMN quiet_hours text CHECK (quiet_hours = '' OR quiet_hours ~ '^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$'),
    ADD COLUMN budget_hourly integer CHECK (budget_hourly >= 0),
    ADD COLUMN budget_daily integer CHECK (budget_daily >= 0),
    -- Who sends a first message to someone who never wrote (TWILIO_FROM_NUMBER or the Messaging
    -- Service for SMS, WHATSAPP_PHONE_NUMBER_ID for WhatsApp), set at start-up.
    ADD COLUMN default_sms_channel_id bigint REFERENCES channels (id) ON DELETE SET NULL,
    ADD COLUMN default_whatsapp_channel_id bigint REFERENCES channels (id) ON DELETE SET NULL;

ALTER TABLE users ADD COLUMN quiet_hours_enabled boolean NOT NULL DEFAULT true;

-- Provider throughput per sender, in segments per second (NULL: the default for the channel's kind
-- and address type, services/orchestrator/throughput.py); burst in segments (NULL: one second's worth).
ALTER TABLE channels
    ADD COLUMN send_rate numeric CHECK (send_rate > 0),
    ADD COLUMN send_burst numeric CHECK (send_burst >= 1);

-- The queue. Existing rows keep their meaning: a confirmation is class compliance, HELP a reply.
ALTER TABLE message_queue DROP CONSTRAINT message_queue_compliance_is_confirmation;
ALTER TABLE message_queue ADD COLUMN class text;
UPDATE message_queue SET class = CASE WHEN compliance THEN 'compliance' ELSE 'reply' END;
ALTER TABLE message_queue
    ALTER COLUMN class SET NOT NULL,
    ADD CONSTRAINT message_queue_class_check
        CHECK (class IN ('compliance', 'reply', 'transactional', 'marketing')),
    DROP COLUMN compliance,
    -- Only a consent confirmation bypasses consent, budgets and quiet hours, and a confirmation always does.
    ADD CONSTRAINT message_queue_compliance_is_confirmation
        CHECK ((class = 'compliance') = (reason IN ('opt_out_confirmation', 'opt_in_confirmation')));

ALTER TABLE message_queue DROP CONSTRAINT message_queue_status_check;
ALTER TABLE message_queue ADD CONSTRAINT message_queue_status_check CHECK (status IN (
    'queued', 'deferred', 'sending', 'unknown', 'sent', 'delivered', 'read', 'failed', 'undelivered',
    'expired', 'canceled', 'suppressed', 'superseded'));

ALTER TABLE message_queue DROP CONSTRAINT message_queue_reason_check;
ALTER TABLE message_queue ADD CONSTRAINT message_queue_reason_check CHECK (reason IN (
    'help', 'opt_out_confirmation', 'opt_in_confirmation', 'agent_reply', 'sequence', 'broadcast', 'operator'));

-- A body, a template, or both (the template is what goes outside WhatsApp's 24-hour window). The
-- provider's own limit (Twilio 1,600 characters, WhatsApp 4,096) is checked when the row is rendered.
ALTER TABLE message_queue DROP CONSTRAINT message_queue_body_check;
ALTER TABLE message_queue
    ALTER COLUMN body DROP NOT NULL,
    ADD CONSTRAINT message_queue_body_check CHECK (length(body) BETWEEN 1 AND 4096),
    -- Twilio: a Content SID (HX...); Meta: the template's name.
    ADD COLUMN template_name text CHECK (length(template_name) BETWEEN 1 AND 512),
    ADD COLUMN template_language text CHECK (template_language ~ '^[a-z]{2,3}(_[A-Z]{2})?$'),
    -- {"1": "Ana", "2": "10:00"}: Twilio's ContentVariables as they are; Meta's body parameters in key order.
    ADD COLUMN template_variables jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(template_variables) = 'object'),
    ADD CONSTRAINT message_queue_has_content CHECK (body IS NOT NULL OR template_name IS NOT NULL),
    ADD CONSTRAINT message_queue_template_language CHECK (template_name IS NULL OR template_language IS NOT NULL);

ALTER TABLE message_queue RENAME COLUMN send_after TO scheduled_for;
ALTER TABLE message_queue RENAME COLUMN dedupe_key TO idempotency_key;
ALTER TABLE message_queue RENAME CONSTRAINT message_queue_dedupe_key TO message_queue_idempotency_key;

ALTER TABLE message_queue
    -- The sender: the channel of the row's conversation (a reply goes from the number the user wrote to).
    ADD COLUMN channel_id bigint REFERENCES channels (id) ON DELETE CASCADE,
    ADD COLUMN expires_at timestamptz,
    -- When the dispatcher looks at the row next: scheduled_for at first, then the end of a deferral or
    -- a retry's backoff.
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN max_attempts integer NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    -- A send in flight: the dispatcher that holds it, until when. A lapsed lease is not retried but
    -- becomes 'unknown' and is settled by a status callback or a provider lookup.
    ADD COLUMN locked_by text,
    ADD COLUMN locked_until timestamptz,
    ADD COLUMN provider_message_id text,
    ADD COLUMN error_code text,
    ADD COLUMN segments integer CHECK (segments > 0),
    ADD COLUMN encoding text CHECK (encoding IN ('gsm7', 'ucs2')),
    -- What an idempotency key was first used for: the same key with another request is a 409.
    ADD COLUMN request_hash text,
    ADD COLUMN sent_at timestamptz,
    ADD COLUMN status_updated_at timestamptz,
    ADD CONSTRAINT message_queue_lease CHECK ((status = 'sending') = (locked_until IS NOT NULL)),
    ADD CONSTRAINT message_queue_attempts CHECK (attempts >= 0);

UPDATE message_queue q SET channel_id = c.id, next_attempt_at = q.scheduled_for
FROM conversations c WHERE c.id = q.conversation_id;
ALTER TABLE message_queue ALTER COLUMN channel_id SET NOT NULL;

-- The claim: due rows in priority order. Both waiting statuses are in the index; a deferred row waits
-- for its next_attempt_at like a queued one.
DROP INDEX message_queue_due;
CREATE INDEX message_queue_due ON message_queue (priority DESC, next_attempt_at, id)
    WHERE status IN ('queued', 'deferred');
-- Lapsed leases and unsettled sends, for the reaper and the reconciler.
CREATE INDEX message_queue_in_flight ON message_queue (locked_until) WHERE status = 'sending';
CREATE INDEX message_queue_unknown ON message_queue (updated_at) WHERE status = 'unknown';
-- A status callback finds its row by the provider's id.
CREATE INDEX message_queue_provider_message ON message_queue (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE INDEX message_queue_channel ON message_queue (channel_id);
-- Operator listing (GET /api/queue): newest first per tenant.
CREATE INDEX message_queue_tenant ON message_queue (tenant_id, id DESC);

-- Every gate decision, in order: why a message went out late, or not at all. One row per decision that
-- holds, changes or ends a row, and one 'pass' row per dispatch that names every gate it passed (with
-- each gate's reason in detail), so that a sent message costs one verdict row, not one per gate.
CREATE TABLE message_queue_verdicts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    queue_id    bigint NOT NULL REFERENCES message_queue (id) ON DELETE CASCADE,
    gate        text NOT NULL CHECK (gate IN (
                    'opt_out', 'staleness', 'expiry', 'window', 'quiet_hours', 'budget', 'spacing',
                    'throughput', 'render', 'send', 'reconcile', 'operator', 'all')),
    verdict     text NOT NULL CHECK (verdict IN (
                    'pass', 'defer', 'suppress', 'supersede', 'expire', 'fail', 'template', 'sent',
                    'retry', 'unknown', 'cancel', 'requeue')),
    reason      text NOT NULL CHECK (length(reason) BETWEEN 1 AND 200),
    -- For a deferral or retry: when the row will be looked at again.
    until       timestamptz,
    detail      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(detail) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_queue_verdicts_queue ON message_queue_verdicts (queue_id, id);
CREATE INDEX message_queue_verdicts_tenant ON message_queue_verdicts (tenant_id, id);

-- Per user: the limits that override the tenant's (NULL: the tenant's), and the counters the
-- dispatcher moves under this row's lock in the claiming transaction, so any number of dispatchers
-- never exceed them. Windows are the recipient's local hour and day, stored as their start in UTC.
CREATE TABLE user_message_budget (
    user_id            bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    tenant_id          bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    hourly_limit       integer CHECK (hourly_limit >= 0),
    daily_limit        integer CHECK (daily_limit >= 0),
    -- marketing and transactional sends in the current local hour and day
    hour_start         timestamptz,
    hour_count         integer NOT NULL DEFAULT 0 CHECK (hour_count >= 0),
    day_start          timestamptz,
    day_count          integer NOT NULL DEFAULT 0 CHECK (day_count >= 0),
    -- replies in the current hour: the loop guard (PARLEY_REPLY_LIMIT_HOURLY)
    reply_hour_start   timestamptz,
    reply_hour_count   integer NOT NULL DEFAULT 0 CHECK (reply_hour_count >= 0),
    -- the last proactive (marketing, transactional) send: spacing (PARLEY_MIN_SPACING_S)
    last_proactive_at  timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX user_message_budget_tenant ON user_message_budget (tenant_id);

-- The opt-out guard of 0007, with the new waiting and in-flight statuses: a row put back in line
-- (queued, deferred) or handed to a provider (sending) for an opted-out user is refused; every other
-- move (out of line, or recording what a provider already has) passes.
CREATE OR REPLACE FUNCTION parley_queue_respects_opt_out() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    state text;
BEGIN
    IF NEW.reason = 'opt_out_confirmation' THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND NOT (
        (NEW.status IN ('queued', 'deferred') AND OLD.status NOT IN ('queued', 'deferred'))
        OR (NEW.status = 'sending' AND OLD.status IS DISTINCT FROM 'sending')) THEN
        RETURN NEW;
    END IF;
    SELECT consent_state INTO state FROM users WHERE id = NEW.user_id FOR SHARE;
    IF state = 'opted_out' THEN
        RAISE EXCEPTION 'user % opted out', NEW.user_id USING ERRCODE = 'check_violation',
            CONSTRAINT = 'message_queue_opted_out';
    END IF;
    RETURN NEW;
END $$;

-- A STOP cancels what is waiting, deferred rows included.
CREATE OR REPLACE FUNCTION parley_opt_out_cancels_queue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM users WHERE id = NEW.user_id FOR NO KEY UPDATE;
    UPDATE message_queue
    SET status = 'canceled', updated_at = now(), next_attempt_at = now(),
        last_error = format('canceled: consent change %s opted the user out (%s)', NEW.id, NEW.source)
    WHERE user_id = NEW.user_id AND tenant_id = NEW.tenant_id AND status IN ('queued', 'deferred')
      AND reason <> 'opt_out_confirmation';
    RETURN NULL;
END $$;
