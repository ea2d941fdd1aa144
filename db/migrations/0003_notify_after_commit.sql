-- Wake-ups move out of the writing transactions (see db/notify.py): a transaction that NOTIFYs holds a
-- database-wide lock from its commit through its WAL flush, which serialised every inbound commit and
-- defeated group commit. The application now sends the same notifications after commit.
DROP TRIGGER events_notify ON events;
DROP FUNCTION parley_notify_event();
DROP TRIGGER agent_tasks_notify ON agent_tasks;
DROP FUNCTION parley_notify_agent_task();
