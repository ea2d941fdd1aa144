-- Foundation: tenants, channels, end users, conversations, messages, events, agent tasks.
-- Every tenant-owned row carries tenant_id; children cascade with their parents.

CREATE TABLE tenants (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name        text NOT NULL,
    help_text   text NOT NULL,
    -- Mask phone numbers and emails in agent_actions_log inputs/outputs.
    mask_pii    boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE channels (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id              bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind                   text NOT NULL CHECK (kind IN ('twilio_sms', 'twilio_whatsapp', 'whatsapp_cloud')),
    -- What the provider says we were reached at: E.164 for Twilio, phone_number_id for Meta.
    -- '*' is a catch-all for a Twilio account: any number of that account routes here.
    address                text NOT NULL CHECK (address = '*' OR address ~ '^\+[1-9][0-9]{6,14}$'
                                                OR (kind = 'whatsapp_cloud' AND address ~ '^[0-9]+$')),
    display_address        text,
    account_sid            text CHECK (account_sid ~ '^AC[0-9a-fA-F]{32}$'),
    messaging_service_sid  text CHECK (messaging_service_sid ~ '^MG[0-9a-fA-F]{32}$'),
    -- auth_token (Twilio); app_secret, verify_token, access_token (Meta).
    credentials            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(credentials) = 'object'),
    active                 boolean NOT NULL DEFAULT true,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT channels_kind_address_key UNIQUE (kind, address, tenant_id),
    CHECK (kind = 'whatsapp_cloud' OR account_sid IS NOT NULL)
);
-- A concrete address belongs to one tenant; only catch-alls may repeat (one per tenant).
CREATE UNIQUE INDEX channels_address_key ON channels (kind, address) WHERE address <> '*';
CREATE INDEX channels_tenant ON channels (tenant_id);
CREATE INDEX channels_messaging_service ON channels (messaging_service_sid)
    WHERE messaging_service_sid IS NOT NULL;
CREATE INDEX channels_account ON channels (account_sid) WHERE account_sid IS NOT NULL;

-- End users: the people who text a tenant.
CREATE TABLE users (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    phone               text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    wa_id               text,
    wa_user_id          text,      -- Meta business-scoped user id (BSUID)
    wa_parent_user_id   text,
    wa_username         text,
    profile_name        text,
    email               text,
    time_zone           text,
    consent_state       text NOT NULL DEFAULT 'unknown'
                        CHECK (consent_state IN ('unknown', 'opted_in', 'opted_out')),
    consent_updated_at  timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (phone IS NOT NULL OR wa_user_id IS NOT NULL OR wa_username IS NOT NULL)
);
-- One user per identity per tenant. A phone is the strongest identity; Meta's BSUID and username
-- only identify users we have no phone for.
CREATE UNIQUE INDEX users_tenant_phone_key ON users (tenant_id, phone) WHERE phone IS NOT NULL;
CREATE UNIQUE INDEX users_tenant_bsuid_key ON users (tenant_id, wa_user_id)
    WHERE phone IS NULL AND wa_user_id IS NOT NULL;
CREATE UNIQUE INDEX users_tenant_username_key ON users (tenant_id, wa_username)
    WHERE phone IS NULL AND wa_user_id IS NULL AND wa_username IS NOT NULL;
CREATE INDEX users_tenant_bsuid ON users (tenant_id, wa_user_id) WHERE wa_user_id IS NOT NULL;
CREATE INDEX users_phone ON users (phone) WHERE phone IS NOT NULL;

-- Consent changes, kept as history: who, when, which message.
CREATE TABLE consent_changes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    state       text NOT NULL CHECK (state IN ('opted_in', 'opted_out')),
    source      text NOT NULL CHECK (source IN ('keyword', 'classifier', 'operator')),
    keyword     text,
    message_id  bigint,   -- FK added below, once messages exists
    changed_by  text NOT NULL,   -- 'user' for replies, an agent or operator name otherwise
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_changes_user ON consent_changes (user_id, id);

CREATE TABLE conversations (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id          bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel_id       bigint NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed')),
    last_message_at  timestamptz NOT NULL DEFAULT now(),
    -- Start of WhatsApp's 24-hour customer service window.
    last_inbound_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT conversations_tenant_user_channel_key UNIQUE (tenant_id, user_id, channel_id)
);
CREATE INDEX conversations_user ON conversations (user_id);
CREATE INDEX conversations_channel ON conversations (channel_id);
CREATE INDEX conversations_tenant_recent ON conversations (tenant_id, last_message_at DESC, id DESC);

CREATE TABLE messages (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id            bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    conversation_id      bigint NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    direction            text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    provider             text NOT NULL CHECK (provider IN ('twilio', 'meta')),
    provider_message_id  text,
    message_type         text NOT NULL CHECK (message_type IN (
                             'text', 'image', 'audio', 'video', 'document', 'sticker', 'location',
                             'contacts', 'interactive', 'button', 'reaction', 'media', 'unsupported')),
    body                 text,
    media                jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(media) = 'array'),
    details              jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object'),
    status               text NOT NULL CHECK (status IN (
                             'received', 'accepted', 'scheduled', 'queued', 'sending', 'sent',
                             'undelivered', 'failed', 'delivered', 'read', 'played', 'canceled')),
    error_code           text,
    error_message        text,
    segments             integer CHECK (segments > 0),
    keyword              text CHECK (keyword IN ('opt_out', 'opt_in', 'help')),
    raw                  jsonb NOT NULL DEFAULT '{}',
    provider_sent_at     timestamptz,
    status_updated_at    timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT messages_provider_message_id_key UNIQUE (provider, provider_message_id)
);
CREATE INDEX messages_conversation ON messages (conversation_id, id);

ALTER TABLE consent_changes
    ADD CONSTRAINT consent_changes_message_fk FOREIGN KEY (message_id) REFERENCES messages (id) ON DELETE SET NULL;
CREATE INDEX consent_changes_message ON consent_changes (message_id) WHERE message_id IS NOT NULL;

-- Status order for monotonic transitions; mirrors STATUS_RANK in services/channels/base.py.
CREATE FUNCTION parley_status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE status
        WHEN 'received' THEN 0
        WHEN 'accepted' THEN 10 WHEN 'scheduled' THEN 10 WHEN 'queued' THEN 10
        WHEN 'sending' THEN 20
        WHEN 'sent' THEN 30
        WHEN 'canceled' THEN 35
        WHEN 'undelivered' THEN 40 WHEN 'failed' THEN 40
        WHEN 'delivered' THEN 50
        WHEN 'read' THEN 60
        WHEN 'played' THEN 70
    END
$$;

-- Every status callback as received, whether or not we know the message yet: an outbound message's
-- callback can arrive before the send call that created it has returned.
CREATE TABLE message_statuses (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id            bigint REFERENCES tenants (id) ON DELETE CASCADE,
    provider             text NOT NULL CHECK (provider IN ('twilio', 'meta')),
    provider_message_id  text NOT NULL,
    status               text NOT NULL CHECK (status IN (
                             'received', 'accepted', 'scheduled', 'queued', 'sending', 'sent',
                             'undelivered', 'failed', 'delivered', 'read', 'played', 'canceled')),
    error_code           text,
    error_message        text,
    occurred_at          timestamptz,
    raw                  jsonb NOT NULL DEFAULT '{}',
    received_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_statuses_message ON message_statuses (provider, provider_message_id);

CREATE TABLE events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    type             text NOT NULL CHECK (type ~ '^[a-z_]+(\.[a-z_]+)+$'),
    conversation_id  bigint REFERENCES conversations (id) ON DELETE CASCADE,
    user_id          bigint REFERENCES users (id) ON DELETE CASCADE,
    message_id       bigint REFERENCES messages (id) ON DELETE CASCADE,
    payload          jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_tenant ON events (tenant_id, id);
CREATE INDEX events_type ON events (type, id);
CREATE INDEX events_conversation ON events (conversation_id) WHERE conversation_id IS NOT NULL;
CREATE INDEX events_user ON events (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX events_message ON events (message_id) WHERE message_id IS NOT NULL;

-- NOTIFY is a wake-up hint for listeners (live log stream, reactors); the table is the truth.
CREATE FUNCTION parley_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('parley_events',
        json_build_object('id', NEW.id, 'tenant_id', NEW.tenant_id, 'type', NEW.type)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION parley_notify_event();

CREATE TABLE agent_tasks (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    conversation_id   bigint NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    message_id        bigint REFERENCES messages (id) ON DELETE CASCADE,
    kind              text NOT NULL CHECK (kind IN ('process_message')),
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'dead')),
    priority          integer NOT NULL DEFAULT 0,
    attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts      integer NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    run_at            timestamptz NOT NULL DEFAULT now(),
    lease_expires_at  timestamptz,
    locked_by         text,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    CONSTRAINT agent_tasks_message_kind_key UNIQUE (message_id, kind),
    CHECK (status <> 'running' OR lease_expires_at IS NOT NULL)
);
-- The claim scans only live tasks; per-conversation ordering checks use the second index.
CREATE INDEX agent_tasks_claimable ON agent_tasks (priority DESC, id) WHERE status IN ('pending', 'running');
CREATE INDEX agent_tasks_conversation_live ON agent_tasks (conversation_id, id)
    WHERE status IN ('pending', 'running');
CREATE INDEX agent_tasks_tenant_status ON agent_tasks (tenant_id, status, id);

CREATE FUNCTION parley_notify_agent_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Same payload for every row: Postgres folds duplicate notifications within a transaction.
    PERFORM pg_notify('parley_agent_tasks', '');
    RETURN NULL;
END $$;
CREATE TRIGGER agent_tasks_notify AFTER INSERT ON agent_tasks FOR EACH ROW
    EXECUTE FUNCTION parley_notify_agent_task();
