-- The dispatcher (services/orchestrator/dispatcher.py): what it needs beyond 0013.

-- A provider that refuses a recipient as opted out (Twilio 21610, Meta 131050) is a consent change of
-- its own: the user said STOP somewhere we did not see (a carrier-level block, another of our numbers).
ALTER TABLE consent_changes DROP CONSTRAINT consent_changes_source_check;
ALTER TABLE consent_changes ADD CONSTRAINT consent_changes_source_check
    CHECK (source IN ('keyword', 'classifier', 'operator', 'provider'));

-- When the current send attempt began (the row went to 'sending'). A lookup at the provider for an
-- 'unknown' row searches from here, and a WhatsApp row that no callback settles is given up on
-- PARLEY_UNKNOWN_TIMEOUT_S after it. updated_at moves with every status change, so it cannot say this.
ALTER TABLE message_queue ADD COLUMN send_started_at timestamptz;

-- Whether the current attempt sends the row's template rather than its body (the gates chose it,
-- outside WhatsApp's window): a lookup for an 'unknown' row must look for what was actually sent, or it
-- would find nothing and send the message again.
ALTER TABLE message_queue ADD COLUMN sends_template boolean NOT NULL DEFAULT false;

-- The queue status a provider's message status means for a row the provider has: what Twilio and Meta
-- report before delivery (accepted, queued, sending...) is 'sent' from our side. One definition for
-- the dispatcher (a callback that came before the send was recorded) and the reconciler (a callback
-- or lookup that settles an 'unknown' row).
CREATE FUNCTION parley_queue_status_for(message_status text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE message_status
        WHEN 'delivered' THEN 'delivered'
        WHEN 'read' THEN 'read' WHEN 'played' THEN 'read'
        WHEN 'failed' THEN 'failed' WHEN 'canceled' THEN 'failed'
        WHEN 'undelivered' THEN 'undelivered'
        ELSE 'sent'
    END
$$;
