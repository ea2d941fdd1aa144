-- name: channels
-- Inactive rows too: a number an operator deactivated must not fall through to its catch-all.
SELECT id, tenant_id, kind, address, account_sid, messaging_service_sid, credentials, parent_channel_id, active
FROM channels;

-- name: materialise_number
-- A concrete channel for a number of a catch-all's account. It names its catch-all and copies none of
-- its credentials. An existing row is returned as it is (inactive included: deactivation sticks), except
-- that a number of this catch-all follows it to the account it now names.
-- $1 = catch-all channel id, $2 = E.164 address
INSERT INTO channels (tenant_id, kind, address, account_sid, messaging_service_sid, parent_channel_id)
SELECT tenant_id, kind, $2, account_sid, messaging_service_sid, id FROM channels WHERE id = $1
ON CONFLICT (kind, address) WHERE address <> '*'
DO UPDATE SET account_sid = CASE WHEN channels.parent_channel_id = EXCLUDED.parent_channel_id
                                 THEN EXCLUDED.account_sid ELSE channels.account_sid END
RETURNING id, tenant_id, kind, address, account_sid, messaging_service_sid, credentials, parent_channel_id, active;
