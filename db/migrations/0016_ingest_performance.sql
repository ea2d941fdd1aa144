-- Ingest performance.
--
-- A Meta sender with neither phone nor BSUID is found by username among all of the tenant's users
-- (insert_inbound_batch: a user with a phone first), but the only username index is the partial
-- unique one for phone-less, BSUID-less users, which that lookup cannot use: every such message
-- scanned the tenant's users. This index serves the lookup.
CREATE INDEX users_tenant_username ON users (tenant_id, wa_username) WHERE wa_username IS NOT NULL;
