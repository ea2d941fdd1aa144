-- Credentials have one source of truth, and a replayed status callback adds no row.
--
-- A number materialised from a catch-all used to get a copy of the catch-all's credentials: rotating
-- TWILIO_AUTH_TOKEN left the old token on every such number. It now names its catch-all instead and
-- holds no credentials of its own (the directory resolves them from the catch-all when it loads).
-- NO ACTION, not CASCADE: removing a catch-all must not silently delete its numbers' conversations;
-- a tenant's deletion still removes both in one statement.
ALTER TABLE channels ADD COLUMN parent_channel_id bigint REFERENCES channels (id);
CREATE INDEX channels_parent ON channels (parent_channel_id) WHERE parent_channel_id IS NOT NULL;

-- Channels start-up creates from TWILIO_* / WHATSAPP_* settings: start-up also deactivates the ones
-- the settings no longer name, so that removing a setting takes effect on restart.
ALTER TABLE channels ADD COLUMN from_settings boolean NOT NULL DEFAULT false;

-- Until now only start-up wrote the default tenant's catch-alls and WhatsApp Cloud numbers.
UPDATE channels c SET from_settings = true
FROM tenants t
WHERE t.id = c.tenant_id AND t.slug = 'default' AND (c.address = '*' OR c.kind = 'whatsapp_cloud');

-- Rows materialise_number wrote: a concrete number of a catch-all's tenant, kind, account and
-- Messaging Service, without a display address. A Twilio account has one auth token, so even a number
-- an operator added by hand to that account loses nothing by reading it from the catch-all.
UPDATE channels n SET parent_channel_id = ca.id, credentials = '{}'
FROM channels ca
WHERE ca.address = '*' AND n.address <> '*' AND n.tenant_id = ca.tenant_id AND n.kind = ca.kind
  AND n.account_sid = ca.account_sid AND n.display_address IS NULL
  AND n.messaging_service_sid IS NOT DISTINCT FROM ca.messaging_service_sid;

ALTER TABLE channels ADD CONSTRAINT channels_materialised_without_credentials
    CHECK (parent_channel_id IS NULL OR credentials = '{}'::jsonb);

-- A status callback is replayed byte for byte (a provider retry, an attacker): the same status of the
-- same message for the same tenant is kept once. The tenant is part of the key, so a callback one
-- tenant forges about another's message id cannot pre-empt the genuine row.
DELETE FROM message_statuses a
USING message_statuses b
WHERE a.id > b.id AND a.provider = b.provider AND a.provider_message_id = b.provider_message_id
  AND a.status = b.status AND a.tenant_id IS NOT DISTINCT FROM b.tenant_id;
-- Led by (provider, provider_message_id), it serves the lookups the old index did.
DROP INDEX message_statuses_message;
ALTER TABLE message_statuses ADD CONSTRAINT message_statuses_replay_key
    UNIQUE NULLS NOT DISTINCT (provider, provider_message_id, status, tenant_id);
