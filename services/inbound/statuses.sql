-- name: record_status
-- Keep each callback once; move the message's status forward only, and only the verifying tenant's.
-- A replay inserts no history row, and the rank test (equal, not greater) keeps it from moving the
-- message or emitting its event again.
-- $1 = tenant_id, $2 = provider, $3 = provider_message_id, $4 = status, $5 = error_code,
-- $6 = error_message, $7 = occurred_at, $8 = raw
WITH history AS (
    INSERT INTO message_statuses (tenant_id, provider, provider_message_id, status, error_code,
                                  error_message, occurred_at, raw)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT ON CONSTRAINT message_statuses_replay_key DO NOTHING
)
UPDATE messages SET status = $4, error_code = COALESCE($5, error_code),
                    error_message = COALESCE($6, error_message), status_updated_at = now()
WHERE tenant_id = $1 AND provider = $2 AND provider_message_id = $3
  AND parley_status_rank($4) > parley_status_rank(status)
RETURNING id, tenant_id, conversation_id;
