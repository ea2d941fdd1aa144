-- name: upsert_tenant
-- $1 = slug, $2 = name, $3 = help_text
INSERT INTO tenants (slug, name, help_text) VALUES ($1, $2, $3)
ON CONFLICT (slug) DO UPDATE SET name = EXCLUDED.name, help_text = EXCLUDED.help_text, updated_at = now()
RETURNING id;

-- name: upsert_channel
-- $1 = tenant_id, $2 = kind, $3 = address, $4 = account_sid, $5 = credentials, $6 = display_address
INSERT INTO channels (tenant_id, kind, address, account_sid, credentials, display_address)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT ON CONSTRAINT channels_kind_address_key
DO UPDATE SET account_sid = EXCLUDED.account_sid, credentials = EXCLUDED.credentials,
              display_address = COALESCE(EXCLUDED.display_address, channels.display_address),
              active = true, updated_at = now()
RETURNING id;
