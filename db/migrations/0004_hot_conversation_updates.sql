-- Every inbound message updates its conversation's last_message_at. conversations_tenant_recent
-- indexed that column, so each of those updates wrote a new tuple version into all five of the
-- table's indexes (no HOT update possible); no query used it. events_type served no query either
-- and cost an index insert per event. Free space on each page (fillfactor) lets the frequent
-- conversation updates stay on their page as heap-only tuples.
DROP INDEX conversations_tenant_recent;
DROP INDEX events_type;
ALTER TABLE conversations SET (fillfactor = 80);
