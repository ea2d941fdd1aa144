-- Agents: dead letters, lead memory and its history, the decision log, conversation summaries,
-- and the outbound queue the agents write replies to.

ALTER TABLE agent_tasks ADD COLUMN payload jsonb NOT NULL DEFAULT '{}';

CREATE TABLE event_dead_letters (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    agent_task_id  bigint NOT NULL REFERENCES agent_tasks (id) ON DELETE CASCADE,
    kind           text NOT NULL,
    payload        jsonb NOT NULL DEFAULT '{}',
    error          text NOT NULL,
    attempts       integer NOT NULL,
    status         text NOT NULL DEFAULT 'dead' CHECK (status IN ('dead', 'requeued')),
    requeued_at    timestamptz,
    requeued_by    text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_dead_letters_tenant ON event_dead_letters (tenant_id, id);
CREATE INDEX event_dead_letters_task ON event_dead_letters (agent_task_id);
CREATE INDEX event_dead_letters_open ON event_dead_letters (id) WHERE status = 'dead';

CREATE TABLE lead_memory (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id            bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id              bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name                 text,
    email                text,
    language             text,
    ai_summary           text,
    intent               text CHECK (intent IN ('opt_out', 'opt_in', 'help', 'interested', 'not_interested',
                                                'question', 'booking', 'complaint', 'wrong_number', 'other')),
    tone                 text CHECK (tone IN ('friendly', 'neutral', 'formal', 'frustrated')),
    urgency              text CHECK (urgency IN ('low', 'medium', 'high')),
    confidence_score     numeric(3, 2) CHECK (confidence_score BETWEEN 0 AND 1),
    -- JSON arrays of {value, timestamp}, appended only when the value changes.
    tone_history         jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(tone_history) = 'array'),
    urgency_history      jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(urgency_history) = 'array'),
    confidence_history   jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(confidence_history) = 'array'),
    current_tag          text NOT NULL DEFAULT 'Active'
                         CHECK (current_tag IN ('Active', 'Follow-Up', 'Converted', 'Archived', 'Deleted')),
    is_test              boolean NOT NULL DEFAULT false,
    last_message_id      bigint REFERENCES messages (id) ON DELETE SET NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT lead_memory_tenant_user_key UNIQUE (tenant_id, user_id)
);
CREATE INDEX lead_memory_user ON lead_memory (user_id);
CREATE INDEX lead_memory_tenant_recent ON lead_memory (tenant_id, updated_at DESC, id DESC);
CREATE INDEX lead_memory_tenant_tag ON lead_memory (tenant_id, current_tag, id);
CREATE INDEX lead_memory_last_message ON lead_memory (last_message_id) WHERE last_message_id IS NOT NULL;

CREATE TABLE lead_actions (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    lead_id             bigint NOT NULL REFERENCES lead_memory (id) ON DELETE CASCADE,
    action_type         text NOT NULL CHECK (action_type IN ('insert', 'update', 'tag', 'archive', 'delete', 'revert')),
    tag                 text CHECK (tag IN ('Active', 'Follow-Up', 'Converted', 'Archived', 'Deleted')),
    previous_tag        text,
    conversion_outcome  boolean NOT NULL DEFAULT false,
    reversion_reason    text,
    changes             jsonb NOT NULL DEFAULT '{}',
    actor               text NOT NULL,
    message_id          bigint REFERENCES messages (id) ON DELETE SET NULL,
    is_test             boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (action_type <> 'revert' OR reversion_reason IS NOT NULL)
);
CREATE INDEX lead_actions_lead ON lead_actions (lead_id, id);
CREATE INDEX lead_actions_tenant ON lead_actions (tenant_id, id);
CREATE INDEX lead_actions_message ON lead_actions (message_id) WHERE message_id IS NOT NULL;

-- History is immutable: rows go only when their lead (or tenant) goes.
CREATE FUNCTION parley_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are immutable', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER lead_actions_immutable BEFORE UPDATE ON lead_actions
    FOR EACH ROW EXECUTE FUNCTION parley_immutable();

CREATE TABLE agent_actions_log (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    agent            text NOT NULL,
    action           text NOT NULL,
    conversation_id  bigint REFERENCES conversations (id) ON DELETE CASCADE,
    message_id       bigint REFERENCES messages (id) ON DELETE SET NULL,
    agent_task_id    bigint REFERENCES agent_tasks (id) ON DELETE SET NULL,
    input            jsonb NOT NULL DEFAULT '{}',
    output           jsonb NOT NULL DEFAULT '{}',
    implementation   text,
    model            text,
    latency_ms       numeric(12, 3) NOT NULL CHECK (latency_ms >= 0),
    tokens_in        integer NOT NULL DEFAULT 0 CHECK (tokens_in >= 0),
    tokens_out       integer NOT NULL DEFAULT 0 CHECK (tokens_out >= 0),
    cost_usd         numeric(14, 8) NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    status           text NOT NULL CHECK (status IN ('ok', 'fallback', 'possible_opt_out', 'skipped', 'error')),
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_actions_log_agent ON agent_actions_log (agent, id DESC);
CREATE INDEX agent_actions_log_conversation ON agent_actions_log (conversation_id, id DESC);
CREATE INDEX agent_actions_log_status ON agent_actions_log (status, id DESC);
-- Append-only and time-ordered: a BRIN index serves since/until filters for a fraction of a btree's cost.
CREATE INDEX agent_actions_log_created ON agent_actions_log USING brin (created_at);
CREATE INDEX agent_actions_log_message ON agent_actions_log (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX agent_actions_log_task ON agent_actions_log (agent_task_id) WHERE agent_task_id IS NOT NULL;

CREATE TABLE conversation_summaries (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    conversation_id   bigint NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    up_to_message_id  bigint NOT NULL,
    message_count     integer NOT NULL CHECK (message_count > 0),
    summary           text NOT NULL,
    implementation    text NOT NULL,
    model             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT conversation_summaries_upto_key UNIQUE (conversation_id, up_to_message_id)
);
CREATE INDEX conversation_summaries_latest ON conversation_summaries (conversation_id, up_to_message_id DESC);

CREATE TABLE message_queue (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id            bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    conversation_id      bigint NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id              bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    body                 text NOT NULL CHECK (length(body) BETWEEN 1 AND 1600),
    status               text NOT NULL DEFAULT 'queued'
                         CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'canceled')),
    priority             integer NOT NULL DEFAULT 0,
    reason               text NOT NULL CHECK (reason IN ('help', 'opt_out_confirmation', 'opt_in_confirmation',
                                                         'agent_reply', 'sequence', 'operator')),
    -- Compliance messages go out even to an opted-out user and outside quiet hours.
    compliance           boolean NOT NULL DEFAULT false,
    source_message_id    bigint REFERENCES messages (id) ON DELETE SET NULL,
    dedupe_key           text,
    send_after           timestamptz NOT NULL DEFAULT now(),
    attempts             integer NOT NULL DEFAULT 0,
    last_error           text,
    message_id           bigint REFERENCES messages (id) ON DELETE SET NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT message_queue_dedupe_key UNIQUE (tenant_id, dedupe_key)
);
CREATE INDEX message_queue_due ON message_queue (priority DESC, send_after, id) WHERE status = 'queued';
CREATE INDEX message_queue_conversation ON message_queue (conversation_id, id);
CREATE INDEX message_queue_user ON message_queue (user_id, id);
CREATE INDEX message_queue_source ON message_queue (source_message_id) WHERE source_message_id IS NOT NULL;
CREATE INDEX message_queue_message ON message_queue (message_id) WHERE message_id IS NOT NULL;

-- Nothing but the compliance confirmation may be queued for a user who opted out: enforced here too,
-- so no code path (agent, sequence, operator) can get around it.
CREATE FUNCTION parley_queue_respects_opt_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT NEW.compliance AND EXISTS (
        SELECT 1 FROM users WHERE id = NEW.user_id AND consent_state = 'opted_out') THEN
        RAISE EXCEPTION 'user % opted out', NEW.user_id USING ERRCODE = 'check_violation',
            CONSTRAINT = 'message_queue_opted_out';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER message_queue_opt_out BEFORE INSERT ON message_queue
    FOR EACH ROW EXECUTE FUNCTION parley_queue_respects_opt_out();

CREATE INDEX consent_changes_tenant ON consent_changes (tenant_id, id);
CREATE INDEX users_tenant ON users (tenant_id, id);
