-- Lead memory that remembers (issue 12 §4): what the lead wants, when, and what is still open survive a
-- later "HELP" or "thanks"; each message keeps its own intent (lead_memory.intent keeps the strongest).
ALTER TABLE lead_memory
    ADD COLUMN requested_time jsonb,      -- agents/when.py RequestedTime.as_json() + message_id
    ADD COLUMN wants text,                -- the service or topic asked about ("a cleaning")
    ADD COLUMN open_question text,        -- the lead's last question not yet answered, or NULL
    ADD COLUMN intent_message_id bigint;  -- the message the kept (strongest) intent came from

ALTER TABLE messages
    ADD COLUMN intent text CHECK (intent IN ('opt_out', 'opt_in', 'help', 'interested', 'not_interested',
                                             'question', 'booking', 'complaint', 'wrong_number', 'other'));
