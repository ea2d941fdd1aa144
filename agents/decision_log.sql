-- name: insert_entries
-- $1..$16 as listed in decision_log.insert
INSERT INTO agent_actions_log (tenant_id, agent, action, conversation_id, message_id, agent_task_id, input, output,
                               implementation, model, latency_ms, tokens_in, tokens_out, cost_usd, status, error)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16);
