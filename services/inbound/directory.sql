-- name: active_channels
SELECT id, tenant_id, kind, address, account_sid, messaging_service_sid, credentials
FROM channels WHERE active;

-- name: materialise_number
-- $1 = catch-all channel id, $2 = E.164 address
INSERT INTO channels (tenant_id, kind, address, account_sid, messaging_service_sid, credentials)
SELECT tenant_id, kind, $2, account_sid, messaging_service_sid, credentials FROM channels WHERE id = $1
ON CONFLICT (kind, address) WHERE address <> '*' DO UPDATE SET updated_at = channels.updated_at
RETURNING id, tenant_id, kind, address, account_sid, messaging_service_sid, credentials;
