-- name: upsert_tenant
-- $1 = slug, $2 = name, $3 = help_text
INSERT INTO tenants (slug, name, help_text) VALUES ($1, $2, $3)
ON CONFLICT (slug) DO UPDATE SET name = EXCLUDED.name, help_text = EXCLUDED.help_text, updated_at = now()
RETURNING id;

-- name: upsert_channel
-- A channel the settings describe: they are its credentials' one source of truth, so they replace
-- whatever the row held, and it is active while the settings name it.
-- $1 = tenant_id, $2 = kind, $3 = address, $4 = account_sid, $5 = credentials, $6 = display_address,
-- $7 = messaging_service_sid (TWILIO_MESSAGING_SERVICE_SID on the SMS catch-all, else NULL)
INSERT INTO channels (tenant_id, kind, address, account_sid, credentials, display_address, messaging_service_sid,
                      from_settings)
VALUES ($1, $2, $3, $4, $5, $6, $7, true)
ON CONFLICT ON CONSTRAINT channels_kind_address_key
DO UPDATE SET account_sid = EXCLUDED.account_sid, credentials = EXCLUDED.credentials,
              display_address = COALESCE(EXCLUDED.display_address, channels.display_address),
              messaging_service_sid = EXCLUDED.messaging_service_sid,
              from_settings = true, active = true, updated_at = now()
RETURNING id;

-- name: deactivate_unnamed_settings_channels
-- Channels earlier settings created that the current ones no longer name (a removed TWILIO_* pair, a
-- changed WHATSAPP_PHONE_NUMBER_ID). The numbers materialised from such a catch-all stop verifying
-- with it (services/inbound/directory.py); their own active flag is an operator's and is left alone.
-- $1 = tenant_id, $2 = ids of the channels the settings name
UPDATE channels SET active = false, updated_at = now()
WHERE tenant_id = $1 AND from_settings AND active AND NOT (id = ANY($2::bigint[]));

-- name: catch_all_conflicts
-- Active catch-alls that claim the same account: which would route its numbers is undefined.
SELECT c.kind, c.account_sid, string_agg(t.slug, ', ' ORDER BY t.slug) AS tenants
FROM channels c JOIN tenants t ON t.id = c.tenant_id
WHERE c.address = '*' AND c.active
GROUP BY c.kind, c.account_sid
HAVING count(*) > 1
ORDER BY c.kind, c.account_sid;

-- name: sender_number
-- TWILIO_FROM_NUMBER as a number of the account's SMS catch-all, as a first inbound message to it would
-- materialise it (credentials read from the catch-all). Not from_settings: a number that stops being
-- the default sender is still the account's and keeps receiving. An existing row is left as it is.
-- $1 = the SMS catch-all's id, $2 = E.164 number
INSERT INTO channels (tenant_id, kind, address, account_sid, messaging_service_sid, parent_channel_id)
SELECT tenant_id, kind, $2, account_sid, messaging_service_sid, id FROM channels WHERE id = $1
ON CONFLICT DO NOTHING;

-- name: number_channel
-- $1 = kind, $2 = E.164 number
SELECT id, tenant_id, active FROM channels WHERE kind = $1 AND address = $2;

-- name: set_default_senders
-- Who sends a first message to someone who never wrote; NULL: no default (the API then asks for a channel).
-- $1 = tenant_id, $2 = SMS channel id, $3 = WhatsApp channel id
UPDATE tenants SET default_sms_channel_id = $2, default_whatsapp_channel_id = $3, updated_at = now()
WHERE id = $1;

-- name: set_policy
-- An operator's change to a tenant's outbound defaults (PATCH /api/tenant). Only the fields named
-- change; NULL means the settings' default, quiet_hours '' none at all.
-- $1 = tenant_id, $2 = set time_zone, $3 = time_zone, $4 = set quiet_hours, $5 = quiet_hours,
-- $6 = set budget_hourly, $7 = budget_hourly, $8 = set budget_daily, $9 = budget_daily
UPDATE tenants SET time_zone = CASE WHEN $2::boolean THEN $3::text ELSE time_zone END,
                   quiet_hours = CASE WHEN $4::boolean THEN $5::text ELSE quiet_hours END,
                   budget_hourly = CASE WHEN $6::boolean THEN $7::integer ELSE budget_hourly END,
                   budget_daily = CASE WHEN $8::boolean THEN $9::integer ELSE budget_daily END,
                   updated_at = now()
WHERE id = $1
RETURNING id;
