-- A message and an agent task belong to their conversation's tenant. Checking that with one foreign
-- key on (tenant_id, conversation_id) replaces two checks per row (tenant, conversation), and it
-- enforces what the two separate keys could not: that the row's tenant is its conversation's tenant.
-- It also stops every inbound transaction from taking a FOR KEY SHARE lock on the tenant's single row
-- for these tables; concurrent holders of that lock turn it into a multixact. Deleting a tenant still
-- removes everything: tenants cascade to conversations, and conversations to these rows.
ALTER TABLE conversations ADD CONSTRAINT conversations_tenant_id_id_key UNIQUE (tenant_id, id);

ALTER TABLE messages
    DROP CONSTRAINT messages_tenant_id_fkey,
    DROP CONSTRAINT messages_conversation_id_fkey,
    ADD CONSTRAINT messages_conversation_fkey FOREIGN KEY (tenant_id, conversation_id)
        REFERENCES conversations (tenant_id, id) ON DELETE CASCADE;

ALTER TABLE agent_tasks
    DROP CONSTRAINT agent_tasks_tenant_id_fkey,
    DROP CONSTRAINT agent_tasks_conversation_id_fkey,
    ADD CONSTRAINT agent_tasks_conversation_fkey FOREIGN KEY (tenant_id, conversation_id)
        REFERENCES conversations (tenant_id, id) ON DELETE CASCADE;
