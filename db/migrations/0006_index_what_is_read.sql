-- Indexes for what the database actually reads, one entry per inbound message fewer.
--
-- events_tenant: no query lists events yet; the operator stream that will should bring the index its
-- query needs. Deleting a tenant, a rare operator action, now scans events once for its cascade.
DROP INDEX events_tenant;
-- agent_tasks_tenant_status served no query. The key that deleting a conversation cascades through,
-- (tenant_id, conversation_id) since 0005, had no index of its own (agent_tasks_conversation_live
-- holds live tasks only), so each deleted conversation scanned its tenant's tasks: this one replaces it.
DROP INDEX agent_tasks_tenant_status;
CREATE INDEX agent_tasks_conversation ON agent_tasks (tenant_id, conversation_id);
